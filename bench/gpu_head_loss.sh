#!/bin/bash
# issue 13 on the lent GPU: the loss over the vocabulary in chunks at the Mistral-7B shape and on SmolLM2,
# then the whole comparison with mlx_lm.lora (memory and speed), then where a one-shot chat's time goes.
# STAGE=warm | step | mixed | equal | chat picks the part to run (each fits one call).
set -e
source bench/gpu_shaped7b.sh
for STAGE in ${STAGE:-step}; do
case "$STAGE" in
warm) warm7b ;;
step)
  for c in ${CHUNKS:-4194304}; do
  python3 bench/bench_head_loss.py /tmp/models/m7b --keep-dtype --batch-size 4 --width 512 --chunk-logits $c \
    2>&1 | tail -7 | tee $OUT/head_loss_7b_$c.txt
  done
  python3 bench/bench_head_loss.py /tmp/models/m7b --keep-dtype --batch-size 4 --width 384 2>&1 | tail -7 \
    | tee $OUT/head_loss_7b_384.txt
  python3 bench/bench_head_loss.py $S --keep-dtype --batch-size 8 --width 256 2>&1 | tail -7 \
    | tee $OUT/head_loss_smollm2.txt ;;
mixed)
  python3 bench/bench_train.py --model /tmp/models/m7b --keep-dtype --samples ${SAMPLES:-480} --batch-size 4 \
    --num-layers 16 --max-seq-length 512 --repeats ${REPEATS:-1} --epochs ${EPOCHS:-2} ${EXTRA} 2>&1 \
    | tail -9 | tee $OUT/train7b_mixed_e${EPOCHS:-2}_${SAMPLES:-480}.txt ;;
equal)
  python3 bench/bench_train.py --model /tmp/models/m7b --keep-dtype --equal --samples 200 --batch-size 4 \
    --num-layers 16 --max-seq-length 512 --repeats ${REPEATS:-2} 2>&1 | tail -8 | tee $OUT/train7b_equal.txt ;;
chat)
  [ -n "$PHASES" ] && python3 bench/startup_phases.py $S 2>&1 | tail -12 | tee $OUT/startup_phases.txt
  python3 bench/bench_startup.py --model $S --repeats ${REPEATS:-4} 2>&1 | tail -10 | tee $OUT/chat_oneshot.txt ;;
esac
done
