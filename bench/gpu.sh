#!/usr/bin/env bash
# The GPU check, under 10 minutes on one GPU (bench/gpu_check.py has the details):
#   1. synthetic shards (the embedded web's pictures, 5 years x 2048 samples) under $WORK;
#   2. ViT-B-32 at 224 px, amp_bf16, batch 256 per GPU: the bundled trainer and open_clip_train
#      on the same shards, one after the other -> samples/s per GPU of each;
#   3. TiC protocol cumulative-all for two short time steps (8192 samples each, --accum-freq 2,
#      --grad-checkpointing) and `python -m eval tic run` of it on the GPU.
# Figures: printed, and bench/out/gpu.json. Needs the project's venv (make venv) and one CUDA GPU.
#   bash bench/gpu.sh [--samples 16384] [--batch-size 256] [--work /tmp/tic-gpu-check]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 590 "$PY" -m bench.gpu_check "$@"
