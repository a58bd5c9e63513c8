"""An OpenAI-compatible endpoint for a base model with a run's adapter: mlx-lm's own server
(``/v1/chat/completions`` with streaming, ``/v1/completions``, ``/v1/models``), started on the run's
adapter and base, with farense-tui's sampler defaults.

    farense-tui serve --run DIR | --adapter DIR [--model M] [--host H] [--port P]

While it runs, ``serve.json`` in the run folder holds the URL and the process id, so the app's Chat
tab can show where the endpoint is; it is removed when the server stops.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from farense_core.config import atomic_write_text
from farense_core.models import ModelNotFoundError, locate_model
from farense_core.rundir import ENDPOINT_FILE, AdapterSettingsError, RunDir, adapter_settings
from farense_core.sampling import DEFAULTS as SAMPLER

from .chat import ChatError, adapter_folder


class ServeError(Exception):
    """One sentence: what is wrong and what to do."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="farense-tui serve",
                                description="Serve a base model with a run's adapter as an OpenAI-compatible API "
                                            "(mlx-lm's server).")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a run folder: its best adapter (adapters/, else final/) and its base model")
    which.add_argument("--adapter", help="an adapter folder (adapters.safetensors + adapter_config.json)")
    p.add_argument("--model", help="the base model (default: the run's, or the one the adapter records)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[str, Path, Optional[RunDir]]:
    """(base model folder, adapter folder, the run it belongs to)."""
    source = args.run or args.adapter
    if not Path(source).expanduser().is_dir():
        what = "run" if args.run else "adapter"
        raise ServeError(f"The {what} folder {source} does not exist; pass --{what} with an existing folder.")
    adapter = adapter_folder(str(Path(source).expanduser()))
    run = RunDir(Path(args.run).expanduser()) if args.run else RunDir.of_adapter(adapter)
    base = args.model or (run.base_model() if run else None) or adapter_settings(adapter).get("model")
    if not base:
        raise ServeError(f"{source} names no base model; pass --model with the model the adapter was trained on.")
    try:
        return locate_model(str(base)), adapter, run
    except ModelNotFoundError as e:
        raise ServeError(str(e)) from None


def announce(run: Optional[RunDir], url: str, base: str, adapter: Path) -> None:
    """serve.json in the run folder while this process serves; removed at exit."""
    if run is None:
        return
    path = run.path / ENDPOINT_FILE
    atomic_write_text(path, json.dumps({"url": url, "pid": os.getpid(), "model": base, "adapter": str(adapter)}) + "\n")

    def remove(*_):
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass

    def on_terminate(*_):  # a plain kill: the server's threads would outlive a SystemExit
        remove()
        os._exit(0)

    atexit.register(remove)
    signal.signal(signal.SIGTERM, on_terminate)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        base, adapter, run = resolve(args)
    except (ServeError, ChatError, AdapterSettingsError) as e:
        print(f"farense-tui serve: {e}", file=sys.stderr)
        return 1
    url = f"http://{args.host}:{args.port}/v1"
    announce(run, url, base, adapter)
    print(f"Serving {base} with the adapter {adapter} at {url} (OpenAI-compatible: /v1/chat/completions, "
          f"/v1/models); Ctrl+C stops.", flush=True)
    from huggingface_hub.constants import HF_HUB_CACHE
    from mlx_lm import server

    Path(HF_HUB_CACHE).mkdir(parents=True, exist_ok=True)  # /v1/models scans it and fails where it is missing

    sys.argv = ["mlx_lm.server", "--model", base, "--adapter-path", str(adapter), "--host", args.host,
                "--port", str(args.port), "--temp", str(SAMPLER["temperature"]), "--top-p", str(SAMPLER["top_p"]),
                "--min-p", str(SAMPLER["min_p"]), "--log-level", "WARNING"]
    try:
        server.main()
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"farense-tui serve: could not listen on {args.host}:{args.port} ({e.strerror}); pass another --port.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
