#!/usr/bin/env bash
# Download, where pip can reach a package index, the wheels scripts/gpu_check.sh installs on a GPU machine that
# cannot: Python 3.12 on x86-64 with its own torch (2.11, CUDA 13), which lacks these from requirements.txt.
#
#   bash scripts/gpu_wheels.sh [DEST]        (default: .whl/gpu_check/, ignored by git)
#
# The wheels travel with the working tree (carry .whl/gpu_check), and the tree with them must stay under 64 MiB.
# Pinned, one version each: two versions of one package in the folder would stop the install.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${1:-$root/.whl/gpu_check}
limit_mib=64
required=(ml_collections==1.1.0 pytorch-fid==0.3.0)
optional=(xformers==0.0.35)  # needs torch >= 2.10; the check runs without it
platform=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

mkdir -p "$dest"
rm -f "$dest"/*.whl
python3 -m pip download -q "${platform[@]}" -d "$dest" "${required[@]}"
python3 -m pip download -q "${platform[@]}" -d "$dest" "${optional[@]}" \
    || echo "warning: could not download ${optional[*]}; the GPU check will run without xformers" >&2

wheels_bytes=$(cat "$dest"/*.whl | wc -c)
# what travels besides: tracked files and untracked ones git does not ignore
tree_bytes=$(cd "$root" && git ls-files -co --exclude-standard -z | xargs -0 cat 2>/dev/null | wc -c)
ls -l "$dest"
awk -v w="$wheels_bytes" -v t="$tree_bytes" -v l="$limit_mib" 'BEGIN {
    printf "wheels %.1f MiB + working tree %.1f MiB = %.1f MiB of the %d MiB that may travel\n",
           w / 2^20, t / 2^20, (w + t) / 2^20, l
    exit (w + t > l * 2^20) }' || { echo "error: over the $limit_mib MiB limit" >&2; exit 1; }
