#!/usr/bin/env bash
# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
#
# Installs everything mmstvit needs into the interpreter $PYTHON (default: python3).
# Called by `make install` (and so by `make demo` and `make test`). Safe to run again:
# when the stack already imports it does nothing, and the mmcv wheel it compiled is kept
# in a wheelhouse keyed by the torch it was built against, so it is never rebuilt.
# `bash tools/install.sh --help` lists the options.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash tools/install.sh [--stack upstream|onedl] [--force] [--check] [--help]

Installs torch (when there is none), mmcv 2.1.0 (built once, cached), one OpenMMLab
stack and this checkout (editable) into the interpreter $PYTHON (default: python3).

  --stack upstream  OpenMMLab's releases: mmengine 0.10.7, mmdet 3.3.0,
                    mmsegmentation 1.2.2, mmpretrain 1.2.0 (the default; also $STACK)
  --stack onedl     the maintained fork: onedl-mmengine 0.10.12, onedl-mmdetection
                    3.5.1, onedl-mmsegmentation 1.4.2, onedl-mmpretrain 1.3.6
  --force           install again even if the stack already imports
  --check           install nothing: exit 0 if the stack is installed, 1 if not
  --help            this text

One environment holds one stack (the same module names): the script refuses (exit 3)
an environment that holds the other one, and says how to start clean.

Environment: PYTHON (python3), TORCH_SPEC (torch==2.14.1), TORCHVISION_SPEC
(torchvision==0.29.1), MMSTVIT_CACHE (~/.cache/mmstvit: the mmcv wheels),
MAX_JOBS (parallel compile jobs for mmcv: the number of cores).
EOF
}

STACK=${STACK:-upstream}
FORCE=0
CHECK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --stack)
            if [ $# -lt 2 ]; then
                echo "install.sh: --stack needs a value: upstream or onedl" >&2
                exit 2
            fi
            STACK=$2; shift 2 ;;
        --stack=*) STACK=${1#--stack=}; shift ;;
        --force) FORCE=1; shift ;;
        --check) CHECK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (bash tools/install.sh --help)" >&2
           exit 2 ;;
    esac
done
case "$STACK" in
    upstream|onedl) ;;
    *) echo "install.sh: unknown stack '$STACK': upstream or onedl (--help)" >&2
       exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.29.1}
CACHE=${MMSTVIT_CACHE:-$HOME/.cache/mmstvit}
MMCV_VERSION=2.1.0
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}
# Every pip call sees the stack's constraints. upstream: setuptools < 81 (mmcv's
# setup.py and mmengine's `mmdet::` config lookup need pkg_resources), mmcv 2.1.0,
# mmengine 0.10.7. onedl: mmcv 2.1.0 and the fork's versions (no pkg_resources need).
if [ "$STACK" = onedl ]; then
    CONSTRAINTS=$ROOT/requirements/constraints-onedl.txt
    MMINSTALL=$ROOT/requirements/mminstall-onedl.txt
    MMENGINE=onedl-mmengine==0.10.12
else
    CONSTRAINTS=$ROOT/requirements/constraints.txt
    MMINSTALL=$ROOT/requirements/mminstall.txt
    MMENGINE=mmengine==0.10.7
fi
PIP=("$PYTHON" -m pip install --disable-pip-version-check -c "$CONSTRAINTS")

say() { printf '\n[mmstvit install] %s\n' "$*"; }

stack_ok() {
    MMSTVIT_ROOT="$ROOT" MMSTVIT_STACK="$STACK" "$PYTHON" - <<'EOF' >/dev/null 2>&1
import importlib, importlib.metadata as md, os, sys
if os.environ['MMSTVIT_STACK'] == 'upstream':
    import setuptools, pkg_resources  # noqa: F401  (mmengine needs pkg_resources)
    assert int(setuptools.__version__.split('.')[0]) < 81
    assert md.version('mmengine') == '0.10.7'
else:
    assert md.version('onedl-mmengine') == '0.10.12'
    for name in ('onedl-mmdetection', 'onedl-mmsegmentation', 'onedl-mmpretrain'):
        md.version(name)
for name in ('torch', 'torchvision', 'mmengine', 'mmcv', 'mmcv.ops', 'mmdet',
             'mmseg', 'mmpretrain', 'pycocotools', 'pytest', 'onnx',
             'onnxruntime', 'safetensors', 'mmstvit'):
    importlib.import_module(name)
import mmcv
assert mmcv.__version__ == '2.1.0', mmcv.__version__
# mmstvit must be this checkout (not an install of another copy)
import mmstvit
here = os.path.realpath(os.path.join(os.environ['MMSTVIT_ROOT'], 'mmstvit'))
assert os.path.realpath(os.path.dirname(mmstvit.__file__)) == here
# installed by this setup.py: mmstvit/.mim links to the checkout's configs,
# tools and model index (mmstvit:: config names), and the scope module
assert os.path.isfile(os.path.join(here, '.mim', 'model-index.yml'))
import _mmstvit_scope
assert os.path.realpath(os.path.dirname(_mmstvit_scope.__file__)) == \
    os.path.dirname(here)
EOF
}

# One environment, one stack: refuse one that holds the other (exit 3, with the way out).
if "$PYTHON" -c '' 2>/dev/null; then
    "$PYTHON" "$ROOT/tools/misc/stack_check.py" --expect "$STACK" >/dev/null
fi

if [ "$CHECK" = 1 ]; then
    if stack_ok; then say "the $STACK stack is installed"; exit 0; fi
    say "the $STACK stack is not (fully) installed in $PYTHON"; exit 1
fi
if [ "$FORCE" = 0 ] && stack_ok; then
    say "the $STACK stack is installed; nothing to do"
    exit 0
fi
say "installing the $STACK stack into $PYTHON"

# 1. torch: keep the user's; install one when there is none.
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    say "no torch found: installing $TORCH_SPEC $TORCHVISION_SPEC"
    "${PIP[@]}" "$TORCH_SPEC" "$TORCHVISION_SPEC"
fi
TORCH_VERSION=$("$PYTHON" -c 'import torch; print(torch.__version__)')
say "using torch $TORCH_VERSION"

# torchvision (mmpretrain imports it): the release made for this torch.
if ! "$PYTHON" -c 'import torchvision' 2>/dev/null; then
    TV=$("$PYTHON" - <<'EOF'
import torch
major, minor = (int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
# torchvision 0.(minor + 15) pairs with torch 2.minor since torch 2.0
print(f'torchvision==0.{minor + 15}.*' if major == 2 else '')
EOF
)
    if [ -n "$TV" ]; then
        say "installing $TV (for torch $TORCH_VERSION) without touching torch"
        "${PIP[@]}" --no-deps "$TV" || true
    fi
    if ! "$PYTHON" -c 'import torchvision' 2>/dev/null; then
        say "ERROR: torchvision does not import beside torch $TORCH_VERSION."
        "$PYTHON" -c 'import torchvision' || true
        cat >&2 <<EOF
mmpretrain (and so mmstvit's classification configs) needs a torchvision built for this
torch. Install the matching pair, e.g.
    $PYTHON -m pip install $TORCH_SPEC $TORCHVISION_SPEC
(PyPI's torchvision wheels are CUDA builds; they do not load beside a '+cpu' torch),
then run 'make install' again.
EOF
        exit 1
    fi
fi

# 2. Everything that is not compiled (and, upstream, the build tools: setuptools < 81).
if [ "$STACK" = upstream ]; then
    "${PIP[@]}" -r "$ROOT/requirements/build.txt"
fi
"${PIP[@]}" -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt" \
    "$MMENGINE"

# 3. mmcv 2.1.0 with its compiled ops, built once per torch.
if ! "$PYTHON" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; then
    KEY=$("$PYTHON" - <<'EOF'
import sys, torch
cuda = torch.version.cuda if torch.cuda.is_available() else 'cpu'
print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-{cuda}')
EOF
)
    WHEELHOUSE="$CACHE/wheels/$KEY"
    mkdir -p "$WHEELHOUSE"
    WHEEL=$(ls "$WHEELHOUSE"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$WHEEL" ]; then
        say "building mmcv $MMCV_VERSION for $KEY from source (about 10-20 min on 2 cores)"
        # mmcv 2.1.0's setup.py imports pkg_resources: setuptools < 81 to build it
        "${PIP[@]}" -r "$ROOT/requirements/build.txt"
        SRC="$CACHE/src"
        mkdir -p "$SRC"
        if [ ! -f "$SRC/mmcv-$MMCV_VERSION.tar.gz" ]; then
            "$PYTHON" -m pip download --disable-pip-version-check --no-deps \
                --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$SRC"
        fi
        BUILD=$(mktemp -d)
        tar xzf "$SRC/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
        # torch >= 2.14 headers need C++20; mmcv 2.1.0 hard-codes -std=c++17.
        if "$PYTHON" - <<'EOF'
import sys, torch
major, minor = (int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
sys.exit(0 if (major, minor) >= (2, 14) else 1)
EOF
        then
            sed -i 's/-std=c++17/-std=c++20/g' "$BUILD/mmcv-$MMCV_VERSION/setup.py"
        fi
        (cd "$BUILD/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 "$PYTHON" -m pip wheel \
            --disable-pip-version-check --no-build-isolation --no-deps . -w "$WHEELHOUSE")
        rm -rf "$BUILD"
        WHEEL=$(ls "$WHEELHOUSE"/mmcv-$MMCV_VERSION-*.whl | head -n 1)
    else
        say "reusing $WHEEL"
    fi
    "${PIP[@]}" --no-deps --force-reinstall "$WHEEL"
fi

# 4. The toolboxes (their dependencies resolve against the mmcv just installed) and mmstvit.
"${PIP[@]}" -r "$MMINSTALL"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"

if ! stack_ok; then
    say "ERROR: the $STACK stack still does not import; the failing import follows"
    "$PYTHON" -c 'import torch, torchvision, mmengine, mmcv.ops, mmdet, mmseg, mmpretrain, mmstvit'
    exit 1
fi
say "done ($STACK stack): $("$PYTHON" -c 'import torch, mmcv, mmdet, mmseg, mmpretrain; print("torch", torch.__version__, "mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__, "mmpretrain", mmpretrain.__version__)')"
