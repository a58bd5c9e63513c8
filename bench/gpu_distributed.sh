#!/bin/bash
# issue 16 on a lent 2-GPU host: the 7B-shaped model trained on 1 GPU and on 2 (NCCL, one process each),
# the same global batch and updates; mlx_lm.lora on the same 2 GPUs beside it.
set -e
source bench/gpu_shaped7b.sh
python3 bench/bench_distributed.py --model /tmp/models/m7b --keep-dtype --backend nccl --samples ${SAMPLES:-192} \
  --batch-size 8 --num-layers 16 --max-seq-length 512 --repeats ${REPEATS:-1} ${PEER:---peer} 2>&1 | grep -v Warn \
  | tail -12 | tee $OUT/distributed7b_${SAMPLES:-192}.txt
