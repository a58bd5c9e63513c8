"""Preflight: check this machine, the data and the model, then recommend a config that fits.

Each check is a small function returning ``check`` records (category, name, pass/warn/fail,
a detail and, unless it passed, a fix). ``run_preflight`` runs them in order, streaming each
record as it is made, then recommends a config:

1. the seeds' memory tiers (below 6 GB ... 32 GB and more of available memory) give batch size,
   accumulation, sequence length and learning rate;
2. that is adjusted to the model and the data: the sequence length to the longest example,
   batch and sequence shrunk until the memory estimate keeps 20% free, ``num_layers`` to the
   model's depth, and on a CPU backend ``base_dtype: float32`` (MLX's CPU backend only has a
   fast BLAS path for float32; bfloat16, float16 and quantized matmuls run far slower);
3. with ``probe``, a few real training updates at candidate batch sizes and sequence lengths
   measure peak memory and tokens/s, and the fastest setting that keeps 20% free wins.

The report (``preflight_report.json``) and the config (``recommended_config.json``, a complete
config the engine trains with as it is) are written atomically into ``out``.

The report: ``version``, ``created``, ``seconds``, ``ok`` (no check failed), ``summary`` (counts by
status), ``config`` (the input, resolved), ``model``, ``hardware``, ``device`` (rates in GFLOP/s),
``checks`` (the check records in order), ``recommendation`` (``config``, ``tier``, ``reasons``,
``estimate``, ``source``: tiers or probe) and ``probe`` (null without ``--probe``; else ``rows``
with measured peak, tokens/s and the estimate beside it, ``picked``, ``method``, budgets).

Hardware figures come in as a ``Hardware`` and device figures as a ``DeviceInfo``, so tests can
fake a 5 GB laptop or a reference-BLAS Linux box.
"""

from .run import handle_preflight, run_preflight  # noqa: F401 - registers the handler
