"""farense-tui's core: what the UI, the command line and the engine share, with neither MLX nor
Textual: the protocol, the config schema, the update arithmetic (schedule, batching), the run
folder's layout, model names, sampler settings, the answer scorer and the run's judges.

Import contracts (``.importlinter``, checked by ``make test``) keep it so.
"""
