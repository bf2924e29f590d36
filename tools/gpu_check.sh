#!/usr/bin/env bash
# Issue 12's GPU check in one go, on a machine with a CUDA GPU (a few minutes on an H200): builds the
# ViT-B/16-shaped random CLIP and 5,000 COCO-like JPEGs (640x480, ~150 KB), measures the engine alone,
# the run as a whole process with embeddings stored (loop images/s, fraction of the engine, seconds,
# startup), and float32 exactness engine vs plain on the GPU; see tools/gpu_bench.py.
#
#   tools/gpu_check.sh           the real check (needs CUDA); results in $OUT (default ./gpu-check-out):
#                                env.txt (versions, GPU), gpu_bench.txt (what it printed), gpu_bench.json
#   tools/gpu_check.sh --smoke   the same steps with a tiny model and 64 images, on any machine
#
# Python: $PYTHON, else .venv/bin/python when it exists, else python3. Needs torch, transformers,
# tokenizers, safetensors, pillow, numpy, pyarrow, tqdm, duckdb and pycocotools; not streamlit or altair.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  date -u
  echo "cores: $(nproc)"
  # Versions from the packages' metadata (importing torch or transformers costs seconds); torch's CUDA build
  # and whether it sees the GPU head the bench's output.
  "$PYTHON" -c 'import sys
from importlib.metadata import version as v
print("python", sys.version.split()[0], *(f"| {p} {v(p)}" for p in ("torch", "transformers", "duckdb", "pillow",
      "numpy")))'
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
  uptime
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# Past its time the bench gets SIGABRT, which Python answers with every thread's stack (where it waited).
PYTHONFAULTHANDLER=1 timeout -s ABRT 480 "$PYTHON" -m tools.bench gpu --json "$OUT/gpu_bench.json" "$@" 2>&1 | tee "$OUT/gpu_bench.txt"
