#!/usr/bin/env bash
# GPU check for a bare GPU machine: only Python with torch (CUDA), torchvision and numpy, and a copy
# of this work tree (nothing installed, no TensorRT, no ONNX). Times r50_fpn and r101_fpn end to end
# at 800x1333, batch 1 and 8, fp32 and fp16, with the network's FLOPs; writes
# outputs/gpu_bench/gpu_bench.json and gpu_bench.md (the table for docs/benchmarks.md).
#
#   bash scripts/gpu_bench.sh                       # the default run (a few minutes on one GPU)
#   PYTHON=/path/to/python bash scripts/gpu_bench.sh --out /tmp/gpu --iters 50
#   bash scripts/gpu_bench.sh --device cpu --configs r50_fpn --size 64x96 --batches 1 --iters 1   # smoke test
#
# Any option of `python -m boxinst_serve.apps.bench.gpu --help` can be passed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import torch, torchvision, numpy" 2>/dev/null; then
    echo "gpu_bench: '$PYTHON' cannot import torch, torchvision and numpy (set PYTHON=/path/to/python)" >&2
    exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m boxinst_serve.apps.bench.gpu "$@"
