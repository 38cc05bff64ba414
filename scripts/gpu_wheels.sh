#!/usr/bin/env bash
# Download, where pip can reach a package index, the wheels scripts/gpu_check.sh installs on a GPU machine that
# cannot: Python 3.12 on x86-64 with its own torch (2.11, CUDA 13), which lacks these from requirements.txt. With
# the releases' clones, also copy the files of theirs that the check's against and checkpoint_memory sections import
# (U-ViT's libs/*.py, DiT's models.py) into .whl/releases/, where gpu_check.sh finds them.
#
#   bash scripts/gpu_wheels.sh [DEST] [--uvit_clone=PATH] [--dit_clone=PATH]   (default DEST: .whl/gpu_check/)
#
# .whl/ is ignored by git; the wheels and release files travel with the working tree (carry .whl), and the tree
# with them must stay under 64 MiB. Pinned, one version each: two versions of one package in the folder would stop
# the install.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=$root/.whl/gpu_check
releases=$root/.whl/releases
uvit_clone= dit_clone=
for arg in "$@"; do
    case $arg in
        --uvit_clone=*) uvit_clone=${arg#*=} ;;
        --dit_clone=*) dit_clone=${arg#*=} ;;
        -*) echo "error: unknown option '$arg'" >&2; exit 2 ;;
        *) dest=$arg ;;
    esac
done
limit_mib=64
required=(ml_collections==1.1.0 pytorch-fid==0.3.0)
# xformers needs torch >= 2.10; timm is what the DiT release's models.py imports; the check runs without them
optional=(xformers==0.0.35 timm==1.0.29)
platform=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

mkdir -p "$dest"
rm -f "$dest"/*.whl
python3 -m pip download -q "${platform[@]}" -d "$dest" "${required[@]}"
for package in "${optional[@]}"; do
    python3 -m pip download -q "${platform[@]}" -d "$dest" "$package" \
        || echo "warning: could not download $package; the GPU check will run without it" >&2
done
if [ -n "$uvit_clone" ]; then
    [ -f "$uvit_clone/libs/uvit.py" ] || { echo "error: no libs/uvit.py in $uvit_clone" >&2; exit 2; }
    rm -rf "$releases/U-ViT" && mkdir -p "$releases/U-ViT/libs" && cp "$uvit_clone"/libs/*.py "$releases/U-ViT/libs/"
fi
if [ -n "$dit_clone" ]; then
    [ -f "$dit_clone/models.py" ] || { echo "error: no models.py in $dit_clone" >&2; exit 2; }
    rm -rf "$releases/DiT" && mkdir -p "$releases/DiT" && cp "$dit_clone/models.py" "$releases/DiT/"
fi

wheels_bytes=$({ cat "$dest"/*.whl; find "$releases" -type f -print0 2>/dev/null | xargs -0 -r cat; } | wc -c)
# what travels besides: tracked files and untracked ones git does not ignore
tree_bytes=$(cd "$root" && git ls-files -co --exclude-standard -z | xargs -0 cat 2>/dev/null | wc -c)
ls -l "$dest"
awk -v w="$wheels_bytes" -v t="$tree_bytes" -v l="$limit_mib" 'BEGIN {
    printf "wheels %.1f MiB + working tree %.1f MiB = %.1f MiB of the %d MiB that may travel\n",
           w / 2^20, t / 2^20, (w + t) / 2^20, l
    exit (w + t > l * 2^20) }' || { echo "error: over the $limit_mib MiB limit" >&2; exit 1; }
