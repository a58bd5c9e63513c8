"""farense-tui's engine: all MLX work, run as ``python -m engine`` behind the JSON-lines protocol.

The UI never imports it (an import contract checks); what the two share lives in ``farense_core``.
"""

__version__ = "0.1.0"
