"""farense-tui: the Textual UI and the command line. Never imports mlx: MLX work runs in the engine
subprocess (``python -m engine``) behind ``farense_core.protocol``."""

__version__ = "0.1.0"
