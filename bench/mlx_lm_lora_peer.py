"""Run ``mlx_lm.lora`` unchanged, recording its own training reports as JSON (last line of stdout).

mlx-lm's console output is a rich progress UI; its training callback carries the figures it computes
(tokens/s, trained tokens, peak memory), so we take them from there instead of parsing the screen.
"""

import json
import sys

import mlx_lm.lora as lora
from mlx_lm.tuner.callbacks import TrainingCallback

reports = []


class Record(TrainingCallback):
    def on_train_loss_report(self, info):
        reports.append(dict(info))


lora.get_reporting_callbacks = lambda *a, **k: Record()
sys.argv = ["mlx_lm.lora", *sys.argv[1:]]
lora.main()
print(json.dumps(reports))
