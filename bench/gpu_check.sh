#!/usr/bin/env bash
# Engine vs Captum on a GPU: bert-base, 512 tokens, 50 steps, float32 and bf16.
#
# What it runs: bench/engine_vs_captum.py --device cuda --tokens 512 --repeats 3,
# which times our engine (all four outputs in one pass) against Captum's
# LayerIntegratedGradients (integrated gradients only) on the same input, in
# the same process, and measures the GPU's float32 and bf16 matmul rates in
# that run. About 2 minutes on a recent data-centre GPU.
#
# What it needs: an NVIDIA GPU with its driver (nvidia-smi), and this project
# installed with the benchmark extras, which bring Captum:
#     pip install -e ".[bench]"
# Set PYTHON to use another interpreter (default: .venv/bin/python if the
# project's virtual environment exists, else python3).
#
# Where results go: the folder given as the first argument (default
# gpu-check/ in the current directory):
#     gpu.txt                     the GPU, driver, torch, transformers, Captum
#     engine_vs_captum_cuda512.txt the benchmark's report (also on screen)
#
# How to read the report: one "median ... ms per request" line per method
# (ours float32, ours bf16, Captum at each internal_batch_size); "IG relative
# difference vs Captum" checks both computed the same thing: in float32 it
# should be at rounding level (1e-5 or less), in bf16 (8 significant bits)
# it is larger, at the percent level; "GFLOP/s achieved = N% of a matmul"
# says how close each run comes to the GPU's matmul speed; the last lines,
# "captum/ours bf16" and "captum/ours float32", are the speed-ups (above 1.00x
# means ours is faster).
#
#     bash bench/gpu_check.sh [OUTPUT_DIR]
set -euo pipefail
mkdir -p "${1:-gpu-check}"
out=$(cd "${1:-gpu-check}" && pwd)  # before leaving the caller's directory
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: this check needs an NVIDIA GPU" >&2; exit 1; }
"$PYTHON" -c "import captum" 2>/dev/null \
    || { echo "Captum is not installed for $PYTHON: pip install -e \".[bench]\"" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$PYTHON" -c "import torch, transformers, captum; print('torch', torch.__version__, 'transformers', transformers.__version__, 'captum', captum.__version__)" | tee -a "$out/gpu.txt"
PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 "$PYTHON" bench/engine_vs_captum.py --device cuda --tokens 512 --repeats 3 2>&1 \
    | tee "$out/engine_vs_captum_cuda512.txt"
echo "results in $out/"
