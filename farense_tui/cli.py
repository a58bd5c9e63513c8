"""The ``farense-tui`` command: the TUI with no arguments, headless subcommands otherwise.

Each subcommand owns its arguments. Those that need MLX run in the engine's process
(``python -m engine...``), so this process never imports mlx.
"""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
from typing import Optional, Sequence

from .engine_client import engine_command, engine_env

# name -> (where it runs, what it does)
SUBCOMMANDS = {
    "train": ("farense_tui.commands.train", "train headless: --config FILE --run-dir DIR [--resume] [--detach] [-n N | --hosts FILE]"),
    "attach": ("farense_tui.commands.attach", "follow a run training in the background: DIR [--stop]"),
    "queue": ("farense_tui.commands.queue", "queue runs and sweeps; train them one after another: add, list, run"),
    "preflight": ("farense_tui.commands.preflight", "check this machine, the data and the model; recommend a config"),
    "chat": ("farense_tui.commands.chat", "chat with a model and adapter (one-shot with --prompt)"),
    "data": ("engine.datatools", "build the Farense data set; check, split, measure, preview JSONL; data from documents"),
    "model": ("engine.models", "install the default model; import a GGUF file"),
    "eval": ("engine.evaluate", "ask a model (and adapter) the data's questions; score what it knows"),
    "export": ("engine.export", "export a run: adapter, fused MLX, GGUF (llama.cpp), Ollama, LM Studio"),
    "serve": ("engine.serve", "serve a run's adapter as an OpenAI-compatible API (mlx-lm's server)"),
    "report": ("farense_tui.commands.report", "a run's report: one HTML page with its plots; PNGs in DIR/plots/"),
    "compare": ("farense_tui.commands.compare", "compare runs: settings that differ, best recall and val loss, time"),
}

USAGE = ("usage: farense-tui [--config FILE] [--checkpoints DIR] | SUBCOMMAND [ARGS...]\n\n"
         "With no subcommand, opens the terminal app.\n\nsubcommands:\n") + "\n".join(
    f"  {name:<10} {desc}" for name, (_, desc) in SUBCOMMANDS.items()
) + "\n\nRun 'farense-tui SUBCOMMAND --help' for its options."


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help", "-V", "--version")):
        from .app import main as app_main  # the app's own options: --config FILE, --checkpoints DIR

        return app_main(args) or 0
    name, rest = args[0], args[1:]
    if name in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if name in ("-V", "--version"):
        from . import __version__

        print(f"farense-tui {__version__}")
        return 0
    if name not in SUBCOMMANDS:
        print(f"farense-tui: unknown subcommand {name!r}; run 'farense-tui --help' to see them.", file=sys.stderr)
        return 2
    module = SUBCOMMANDS[name][0]
    if module.startswith("engine."):
        # MLX-side tools run in their own process, with OpenBLAS preloaded where available
        proc = subprocess.Popen(engine_command(module, rest), env=engine_env())
        # a plain kill of this command reaches the process doing the work (a server would outlive it)
        signal.signal(signal.SIGTERM, lambda signum, _: proc.send_signal(signum))
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the terminal sent it to both: let the command finish its own way
            proc.wait()
            return 130
    return importlib.import_module(module).main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
