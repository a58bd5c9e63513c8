#!/bin/bash
# issue 13 on the lent GPU: one update taken apart (per width, both tools) at the Mistral-7B shape and on
# SmolLM2, our per-update peak memory inside a real run, and the equal-length 7B comparison.
# STAGE=profile | mixed | equal picks the part to run (each fits one call).
set -e
source bench/gpu_shaped7b.sh
if [ "${STAGE:-profile}" = profile ]; then
  python3 bench/profile_update.py /tmp/models/m7b --batch-size 4 --widths 64,128,256,384,512 --repeats 4 \
    2>&1 | grep -v Warn | tee $OUT/profile7b.txt
  python3 bench/profile_update.py $S --batch-size 8 --widths 64,128,256 --repeats 4 2>&1 | grep -v Warn \
    | tee $OUT/profile_smollm2.txt
  python3 bench/run_memory.py $S 2>&1 | tail -25 | tee $OUT/run_memory.txt
elif [ "$STAGE" = mixed ]; then
  python3 bench/run_memory.py $S 2>&1 | tail -25 | tee $OUT/run_memory_after.txt
  python3 bench/bench_train.py --model /tmp/models/m7b --keep-dtype --samples 480 --batch-size 4 \
    --num-layers 16 --max-seq-length 512 --repeats 2 2>&1 | tail -8 | tee $OUT/train7b_mixed.txt
else
  python3 bench/bench_train.py --model /tmp/models/m7b --keep-dtype --equal --samples 200 --batch-size 4 \
    --num-layers 16 --max-seq-length 512 --repeats 2 2>&1 | tail -8 | tee $OUT/train7b_equal.txt
fi
