"""farense-tui's engine: all MLX work, run as ``python -m engine`` behind the JSON-lines protocol.

Importing this package (and ``engine.protocol`` / ``engine.config``) loads no mlx, so the UI can
use the protocol and the config schema.
"""

__version__ = "0.1.0"
