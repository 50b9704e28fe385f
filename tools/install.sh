#!/usr/bin/env bash
# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
#
# Installs everything mmstvit needs into the interpreter $PYTHON (default: python3).
# Called by `make install` (and so by `make demo` and `make test`). Safe to run again:
# when the stack already imports it does nothing, and the mmcv wheel it compiled is kept
# in a wheelhouse keyed by the torch it was built against, so it is never rebuilt.
#
#   PYTHON        interpreter to install into                  (python3)
#   TORCH_SPEC    torch to install when there is none          (torch==2.14.1)
#   TORCHVISION_SPEC  torchvision to install with it           (torchvision==0.29.1)
#   MMSTVIT_CACHE where the mmcv wheel is kept                 (~/.cache/mmstvit)
#   MAX_JOBS      parallel compile jobs for mmcv               (number of cores)
set -euo pipefail

PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.29.1}
CACHE=${MMSTVIT_CACHE:-$HOME/.cache/mmstvit}
MMCV_VERSION=2.1.0
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}
# Every pip call sees the constraints: setuptools < 81 (mmcv's setup.py and mmengine's
# `mmdet::` config lookup need pkg_resources), mmcv 2.1.0, mmengine 0.10.7.
PIP=("$PYTHON" -m pip install --disable-pip-version-check
     -c "$ROOT/requirements/constraints.txt")

say() { printf '\n[mmstvit install] %s\n' "$*"; }

stack_ok() {
    MMSTVIT_ROOT="$ROOT" "$PYTHON" - <<'EOF' 2>/dev/null
import importlib, os, sys
import setuptools, pkg_resources  # noqa: F401  (mmengine needs pkg_resources)
assert int(setuptools.__version__.split('.')[0]) < 81
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

if [ "${1:-}" != "--force" ] && stack_ok; then
    say "the stack is installed; nothing to do"
    exit 0
fi

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

# 2. Build tools and everything that is not compiled.
"${PIP[@]}" -r "$ROOT/requirements/build.txt"
"${PIP[@]}" -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt" \
    mmengine==0.10.7

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
"${PIP[@]}" -r "$ROOT/requirements/mminstall.txt"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"

if ! stack_ok; then
    say "ERROR: the stack still does not import; the failing import follows"
    "$PYTHON" -c 'import setuptools, pkg_resources, torch, torchvision, mmengine, mmcv.ops, mmdet, mmseg, mmpretrain, mmstvit'
    exit 1
fi
say "done: $("$PYTHON" -c 'import torch, mmcv, mmdet, mmseg, mmpretrain; print("torch", torch.__version__, "mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmseg", mmseg.__version__, "mmpretrain", mmpretrain.__version__)')"
