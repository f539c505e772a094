#!/usr/bin/env bash
# The GPU run of the engine benchmark that issue 2 asks for where a GPU is at
# hand: bert-base, 512 tokens, 50 steps, float32 and bf16, milliseconds per
# request next to the float32 and bf16 matmul rates of the same run.
#
# Made for a lent device machine, which has torch and transformers but not
# Captum. Captum is pure Python: fetch its wheel here once, carry it there.
#   here:   echo /.whl/ >> .git/info/exclude
#           python3 -m pip download --no-deps --only-binary=:all: -d .whl captum==0.9.0
#   there:  bash bench/gpu_check.sh        (run with carry [".whl"]; about 2 minutes)
# Output also lands in $OUT (the device tool) or the current directory.
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
out=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, captum; print('torch', torch.__version__, 'transformers', transformers.__version__, 'captum', captum.__version__)" | tee -a "$out/gpu.txt"
PYTHONUNBUFFERED=1 python3 bench/engine_vs_captum.py --device cuda --tokens 512 --repeats 3 2>&1 \
    | tee "$out/engine_vs_captum_cuda512.txt"
