#!/bin/bash
# the shipped recipe on the lent GPU with today's code, stopped at a time limit, then asked its questions
set -e
source bench/gpu_env.sh
M=/tmp/models/SmolLM2-135M-Instruct
timeout -s TERM ${TRAIN_S:-420} python3 -m farense_tui.cli train --config configs/farense.yaml --model $M \
  --run-dir /tmp/run > $OUT/train.log 2>&1 || true
tail -4 $OUT/train.log
cp /tmp/run/training_summary.json /tmp/run/config.yaml $OUT/ 2>/dev/null || true
grep '"type":"recall"' /tmp/run/events.jsonl | tail -2 > $OUT/recall_events.jsonl || true
for p in recall paraphrase; do
  python3 -m engine.evaluate --run /tmp/run --model $M --probe $p --n 128 --no-base --out $OUT/eval-$p 2>&1 | tail -6
done
