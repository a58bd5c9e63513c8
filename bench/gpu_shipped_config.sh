#!/bin/bash
# the shipped recipe on the lent GPU with today's code, stopped at a time limit, then asked its questions
set -e
mkdir -p /tmp/blob /tmp/models $OUT
if [ ! -d /tmp/site/mlx ]; then
  cat /root/stash/part.aa /root/stash/part.ab /root/stash/part.ac .gpu/p_part.ad/part.ad | tar -x -C /tmp/blob
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/blob/*.whl
  mv /tmp/blob/SmolLM2-135M-Instruct /tmp/models/
fi
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
export PYTHONPATH=/tmp/site:$PWD LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/cudnn/lib:$SP/nvidia/nccl/lib
M=/tmp/models/SmolLM2-135M-Instruct
timeout -s TERM ${TRAIN_S:-420} python3 -m farense_tui.cli train --config configs/farense.yaml --model $M \
  --run-dir /tmp/run > $OUT/train.log 2>&1 || true
tail -4 $OUT/train.log
cp /tmp/run/training_summary.json /tmp/run/config.yaml $OUT/ 2>/dev/null || true
grep '"type":"recall"' /tmp/run/events.jsonl | tail -2 > $OUT/recall_events.jsonl || true
for p in recall paraphrase; do
  python3 -m engine.evaluate --run /tmp/run --model $M --probe $p --n 128 --no-base --out $OUT/eval-$p 2>&1 | tail -6
done
