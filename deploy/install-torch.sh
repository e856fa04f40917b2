#!/bin/sh
# Install torch $TORCH_VERSION into the venv's python $PY, the build $TORCH asks for, on purpose:
#   cpu  - the CPU-only build from PyTorch's CPU index ($TORCH_CPU_INDEX) when it answers within 5 s, else from pip's
#          configured index (a mirror or local wheels); warns if that gave a CUDA build
#   cuda - PyPI's Linux build, which is the CUDA one (for a volunteer's NVIDIA GPU box)
# Used by `make setup` and by deploy/Dockerfile.
set -eu
: "${PY:=python3}" "${TORCH:=cpu}" "${TORCH_VERSION:=2.13.0}" "${TORCH_CPU_INDEX:=https://download.pytorch.org/whl/cpu}"
case "$TORCH" in
cpu)
    if "$PY" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" \
        "$TORCH_CPU_INDEX" 2>/dev/null; then
        "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
    else
        echo "install-torch: $TORCH_CPU_INDEX is unreachable; using pip's configured index for the CPU build"
        "$PY" -m pip install -q "torch==$TORCH_VERSION"
    fi
    ;;
cuda)
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
    ;;
*)
    echo "install-torch: TORCH must be cpu or cuda, not '$TORCH'" >&2
    exit 2
    ;;
esac
"$PY" - "$TORCH" <<'PYEOF'
import sys

import torch

build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
print(f"install-torch: torch {torch.__version__}, {build} build")
if sys.argv[1] == "cpu" and torch.version.cuda:
    print("install-torch: warning: asked for the CPU build and got a CUDA one (several GB); "
          "set TORCH_CPU_INDEX to a reachable CPU wheel index", file=sys.stderr)
PYEOF
