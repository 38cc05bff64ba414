#!/usr/bin/env bash
# One command for a lent GPU: speed, fp16 overflow handling, FID throughput, DDP and the default GPU path side by
# side with the releases, in under 8 minutes on one H100/H200. Writes OUT_DIR/gpu_check.md and
# OUT_DIR/gpu_check.json (see scripts/gpu_check.py for the sections).
#
#   bash scripts/gpu_check.sh OUT_DIR                        the full check (needs a CUDA GPU)
#   bash scripts/gpu_check.sh OUT_DIR --smoke                tiny sizes on whatever device is here (CI runs this)
#   bash scripts/gpu_check.sh OUT_DIR --sections=gpu_path,against --uvit_clone=U-ViT --dit_clone=DiT
#                                                            only those sections (and what they need); the clones
#                                                            of the releases (carried with the tree) for --against
#
# The GPU machine has its own torch but not all of requirements.txt; what the check needs and that machine lacks
# (ml_collections, pytorch-fid; xformers and timm, optional) is installed from wheels that scripts/gpu_wheels.sh
# downloads into .whl/gpu_check/ and that travel with the working tree. Nothing is installed where the imports
# already work.
set -uo pipefail

usage='usage: bash scripts/gpu_check.sh OUT_DIR [--smoke] [--sections=NAME,...] [--uvit_clone=PATH] [--dit_clone=PATH]'
die() { echo "error: $*" >&2; exit 2; }

[ $# -ge 1 ] || die "expected an output folder and options ($usage)"
out=$1
shift
case $out in -*) die "the first argument is the output folder, got '$out' ($usage)" ;; esac
smoke=
options=()  # checked by gpu_check.py
for arg in "$@"; do
    case $arg in
        --smoke) smoke=--smoke ;;
        --sections=*|--uvit_clone=*|--dit_clone=*) options+=("$arg") ;;
        -*) die "unknown option '$arg' ($usage)" ;;
        *) die "expected an output folder and options, got '$arg' as well ($usage)" ;;
    esac
done
[ -e "$out" ] && [ ! -d "$out" ] && die "$out exists and is not a folder"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# the full check: the releases' files that scripts/gpu_wheels.sh copied, unless a clone is named
releases=${GPU_CHECK_RELEASES:-$root/.whl/releases}
if [ -z "$smoke" ]; then
    case " ${options[*]-} " in *" --uvit_clone="*) ;; *)
        [ -f "$releases/U-ViT/libs/uvit.py" ] && options+=("--uvit_clone=$releases/U-ViT") ;; esac
    case " ${options[*]-} " in *" --dit_clone="*) ;; *)
        [ -f "$releases/DiT/models.py" ] && options+=("--dit_clone=$releases/DiT") ;; esac
fi
mkdir -p "$out" || die "cannot create the output folder $out"

python=${PYTHON:-python3}
wheels=${GPU_CHECK_WHEELS:-$root/.whl/gpu_check}
site=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
start=$(date +%s.%N)
notes=()  # what the install step did, for the report

export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1  # machines where the check runs as root

importable() { "$python" -c "import $1" >/dev/null 2>&1; }

# Required: the suite cannot run without these. One interpreter start finds them all (find_spec imports nothing).
absent=$("$python" -c "
import importlib.util
for pair in ('ml_collections:ml_collections', 'pytorch_fid:pytorch_fid', 'absl:absl_py', 'accelerate:accelerate'):
    try:
        found = importlib.util.find_spec(pair.split(':')[0]) is not None
    except Exception:
        found = False
    if not found:
        print(pair)") || die "cannot run $python"
missing=()
for pair in $absent; do
    module=${pair%%:*} wheel=${pair##*:}
    found=$(ls "$wheels"/"$wheel"-*.whl 2>/dev/null | head -n 1)
    [ -n "$found" ] || die "python module '$module' is missing and no $wheel wheel is in $wheels" \
        "(run bash scripts/gpu_wheels.sh where pip can download, and carry .whl/gpu_check)"
    missing+=("$found")
done
if [ ${#missing[@]} -gt 0 ]; then
    # --no-deps: their own needs (numpy, scipy, torchvision, PyYAML) are on the machine; torch must stay its own
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "${missing[@]}" || die "pip could not install ${missing[*]}"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    for w in "${missing[@]}"; do notes+=("installed $(basename "$w" | cut -d- -f1-2)"); done
fi

# Optional: xformers, only for a real GPU run (it has no CPU kernels). It goes into a folder of its own that joins
# PYTHONPATH only if it imports: a build that breaks at import would otherwise break every benchmark process.
xformers_state=
if [ -z "$smoke" ]; then  # no-gpu: gpu_check.py says so in one line; nothing to install for it (nor timm, below)
    xformers_state=$("$python" -c "
import torch
if not torch.cuda.is_available():
    print('no-gpu')
else:
    try:
        import xformers.ops
        print('present')
    except Exception:
        print('absent')" 2>/dev/null)
fi
if [ "$xformers_state" = absent ]; then
    found=$(ls "$wheels"/xformers-*.whl 2>/dev/null | head -n 1)
    name=$(basename "${found:-xformers}" | cut -d- -f1-2)
    if [ -z "$found" ]; then
        notes+=("xformers: no wheel carried")
    elif ! "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site-xformers" "$found"; then
        notes+=("xformers: pip could not install $name")
    elif PYTHONPATH=$site-xformers${PYTHONPATH:+:$PYTHONPATH} importable xformers.ops; then
        export PYTHONPATH=$site-xformers${PYTHONPATH:+:$PYTHONPATH}
        notes+=("installed $name")
    else
        notes+=("xformers: $name does not import here, left out")
    fi
fi

# Optional: timm, which the DiT release's models.py imports (the against section with --dit_clone); pure Python.
if [ -z "$smoke" ] && [ "$xformers_state" != no-gpu ] && ! importable timm; then
    found=$(ls "$wheels"/timm-*.whl 2>/dev/null | head -n 1)
    if [ -z "$found" ]; then
        notes+=("timm: no wheel carried")
    elif "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$found"; then
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
        notes+=("installed $(basename "$found" | cut -d- -f1-2)")
    else
        notes+=("timm: pip could not install $(basename "$found")")
    fi
fi

install_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
note=$(printf '%s; ' "${notes[@]}")
note=${note%; }
[ -n "$note" ] || note='nothing to install'
exec "$python" "$root/scripts/gpu_check.py" "$out" $smoke ${options[@]+"${options[@]}"} --install_s="$install_s" \
    --install_note="$note"
