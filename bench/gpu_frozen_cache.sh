#!/bin/bash
# issue 13 on the lent GPU: the frozen-block cache at the Mistral-7B shape, mixed data, several epochs:
# mlx_lm.lora, ours, and ours with frozen_cache: off, alternating (bench_train.py --without-cache).
# STAGE=warm builds the shaped model and compiles the kernels once (a cold cache costs minutes in either
# tool); STAGE=run (EPOCHS, SAMPLES, REPEATS) measures.
set -e
source bench/gpu_shaped7b.sh
if [ "${STAGE:-run}" = warm ]; then
  warm7b --without-cache
else
  python3 bench/bench_train.py --model /tmp/models/m7b --keep-dtype --samples ${SAMPLES:-480} --batch-size 4 \
    --num-layers 16 --max-seq-length 512 --repeats ${REPEATS:-1} --epochs ${EPOCHS:-2} --without-cache 2>&1 \
    | tail -9 | tee $OUT/train7b_mixed_e${EPOCHS:-2}_${SAMPLES:-480}.txt
fi
