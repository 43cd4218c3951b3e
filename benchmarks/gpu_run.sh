#!/bin/bash
# Every GPU measurement in one run, for a session that is lent a GPU (device time is scarce):
#   here, once:  python benchmarks/embed_speed.py --save-bf16 out/minilm-bf16   (45 MB: the GPU
#                image lacks the MiniLM package, whose fp32 wheel is over the 64 MiB carry limit)
#   run(command="bash benchmarks/gpu_run.sh", carry=["out/minilm-bf16"], timeout_s=560)
#   -> $OUT/*.log, $OUT/gpu_ppl.json
# score ppl MFU (1B and 125M Llama, padded vs packed, 16k/32k/64k-token batches), then MiniLM
# docs/s packed vs padded. Each step has its own time limit, so one slow step leaves the others.
set -o pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.log"
timeout 400 python3 benchmarks/gpu_ppl.py --json "$OUT/gpu_ppl.json" 2>&1 | tee "$OUT/gpu_ppl.log"
timeout 120 python3 benchmarks/embed_speed.py --gpu --skip-neural --n 17000 --neural-n 20000 \
    --gpu-model out/minilm-bf16 \
    2>&1 | tee "$OUT/embed_gpu.log"
