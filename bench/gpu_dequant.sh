#!/bin/bash
# issue 13 on the lent GPU: quantized matmuls as MLX's kernel computes them against dequantize-then-matmul
# (engine/dequant.py) at the Mistral-7B shape, then the whole comparison with mlx_lm.lora with it.
# STAGE=warm | matmul | graphs | small | mixed | equal picks the parts to run (a space-separated list runs in order).
set -e
source bench/gpu_shaped7b.sh
for STAGE in ${STAGE:-matmul}; do
case "$STAGE" in
warm) warm7b ;;
matmul)
  python3 bench/bench_dequant.py /tmp/models/m7b --batch-size 4 --width ${WIDTH:-512} --rows ${ROWS:-8,64,128,256,2048} ${EXTRA} \
    2>&1 | tail -30 | tee $OUT/dequant_7b.txt ;;
graphs)  # how much MLX's CUDA graphs hold: both ways with smaller graphs (MLX_MAX_MB_PER_BUFFER)
  for MB in ${MBS:-default 200 50}; do
    ( [ "$MB" != default ] && export MLX_MAX_MB_PER_BUFFER=$MB
      python3 bench/bench_dequant.py /tmp/models/m7b --batch-size 4 --width 512 --rows "" 2>&1 | grep -v '^{' \
      | tail -8 | sed "s/^/[MLX_MAX_MB_PER_BUFFER $MB] /" | tee -a $OUT/dequant_graphs.txt )
  done ;;
small)
  python3 bench/bench_dequant.py $S --batch-size 8 --width 256 --rows 64,128,256,2048 2>&1 | tail -30 \
    | tee $OUT/dequant_smollm2.txt ;;
mixed)
  python3 bench/bench_train.py --model /tmp/models/m7b --keep-dtype --samples ${SAMPLES:-480} --batch-size 4 \
    --num-layers 16 --max-seq-length 512 --repeats ${REPEATS:-1} --epochs ${EPOCHS:-2} \
    ${ALSO-"--also dequant_matmul=off"} ${EXTRA} 2>&1 | tail -9 | tee $OUT/train7b_mixed_e${EPOCHS:-2}_${SAMPLES:-480}.txt ;;
equal)
  python3 bench/bench_train.py --model /tmp/models/m7b --keep-dtype --equal --samples 200 --batch-size 4 \
    --num-layers 16 --max-seq-length 512 --repeats ${REPEATS:-1} --also dequant_matmul=off 2>&1 | tail -9 \
    | tee $OUT/train7b_equal.txt ;;
esac
done
