"""The engine process: commands in on stdin, events out on the protocol stream.

At start the real stdout is kept as the protocol stream and file descriptor 1 is pointed at
stderr, so whatever mlx, mlx-lm or a C library prints can never corrupt the protocol.
A reader thread turns stdin lines into commands on a queue; the main thread runs the MLX
work and polls the queue between steps (pause, resume, stop, cancel).
"""

from __future__ import annotations

import importlib
import os
import platform
import queue
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

from . import __version__
from farense_core import protocol as P
from farense_core.blas import loaded_blas
from farense_core.rundir import ENGINE_LOG


class Context:
    """What a command handler gets: emit events, poll commands, know if it must stop."""

    def __init__(self, out: TextIO):
        self._out = out
        self._lock = threading.Lock()
        self._tees: list[TextIO] = []
        self.commands: "queue.Queue[P.Record]" = queue.Queue()
        self.stop_requested = threading.Event()  # set by stop, shutdown, SIGINT, SIGTERM
        self.shutdown_requested = threading.Event()
        self.stdin_closed = threading.Event()
        self.job_error = ""  # the first error of the job running now
        self.job_cancelled = False
        self.signalled = False  # the last stop came from a signal, not a command
        self.hello: Optional[P.Hello] = None
        self.run_dir: Optional[Path] = None  # the run folder a training job writes now
        self.detached = False  # the UI left: only the run folder hears the engine
        self.processes = 1  # processes training together (engine.distributed); this one leads them

    # -- events
    def emit(self, record: P.Record) -> None:
        if isinstance(record, P.Error) and not self.job_error:
            self.job_error = record.message
        line = record.to_line() + "\n"
        failed = []
        with self._lock:
            for tee in list(self._tees):
                try:
                    tee.write(line)
                    tee.flush()
                except (OSError, ValueError) as e:  # a full disk: the run goes on, the UI still hears it
                    self._tees.remove(tee)
                    failed.append(f"{getattr(tee, 'name', 'the events file')} could not be written ({e}); "
                                  f"the run goes on but that file stops here: free disk space.")
            self._write_out(line)
            for message in failed:
                self._write_out(P.Warning(message=message, code="events_file").to_line() + "\n")

    def _write_out(self, line: str) -> None:
        try:
            self._out.write(line)
            self._out.flush()
        except (OSError, ValueError):
            pass  # the UI went away; the run folder still gets every event

    def tee(self, f: Optional[TextIO]) -> None:
        """Also write every event to f (a run's events.jsonl), beginning with this engine's hello (so a
        run folder says what produced each session of it); None removes all tees."""
        with self._lock:
            if f is None:
                self._tees.clear()
                return
            self._tees.append(f)
            if self.hello is not None:
                f.write(self.hello.to_line() + "\n")
                f.flush()

    def detach(self) -> None:
        """Go on without the UI (see protocol.Detach): events to the run folder only, stderr (and C
        output) to its engine.log."""
        if self.run_dir is None:
            self.warn("Nothing is training to detach from: the engine is idle or busy with another job.",
                      code="idle")
            return
        log = self.run_dir / ENGINE_LOG
        self.emit(P.Log(message=f"detached: training goes on in the background (pid {os.getpid()}); the run "
                                f"folder gets its events, {log} its other output"))
        sys.stderr.flush()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.dup2(fd, 1)
        os.close(fd)
        with self._lock:
            old, self._out = self._out, open(os.devnull, "w", encoding="utf-8")
            self.detached = True
        try:
            old.close()  # the UI's end of the pipe sees the stream end
        except OSError:
            pass

    def warn(self, message: str, code: str = "") -> None:
        self.emit(P.Warning(message=message, code=code))

    def refuse(self, cmd: P.Record, busy_with: str) -> None:
        """A job command that cannot run while another job does: its job ends at once."""
        message = f"The engine is {busy_with}; a {cmd.type} command cannot run now."
        self.warn(message, code="busy")
        self.emit(P.Finished(command=cmd.type, status="busy", message=message, id=getattr(cmd, "id", "")))

    def run_job(self, handler: "Handler", cmd: P.Record) -> None:
        """Run one job and end it with its ``finished`` event."""
        self.job_error, self.job_cancelled, self.signalled = "", False, False
        try:
            handler(self, cmd)
        except Exception as e:  # noqa: BLE001 - every failure reaches the UI whole
            self.emit(P.Error(message=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()))
        status = "failed" if self.job_error else "cancelled" if self.job_cancelled else "ok"
        self.emit(P.Finished(command=cmd.type, status=status, message=self.job_error, id=getattr(cmd, "id", "")))

    def log(self, message: str) -> None:
        self.emit(P.Log(message=message))

    # -- commands
    def poll(self) -> Optional[P.Record]:
        try:
            return self.commands.get_nowait()
        except queue.Empty:
            return None

    def wait(self, timeout: Optional[float] = None) -> Optional[P.Record]:
        try:
            return self.commands.get(timeout=timeout)
        except queue.Empty:
            return None


IDLE_VERBS = {P.Stop: "stop", P.Pause: "pause", P.Resume: "continue", P.Cancel: "cancel"}

Handler = Callable[[Context, P.Record], None]
HANDLERS: dict[str, Handler] = {}


def handles(*kinds: type) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for kind in kinds:
            HANDLERS[kind.type] = fn
        return fn

    return register


def _unsupported(ctx: Context, cmd: P.Record) -> None:
    ctx.emit(P.Error(message=f"The engine cannot handle {cmd.type!r} commands yet.", code="unsupported"))


def describe_device() -> tuple[str, str, str]:
    """(device, mlx version, mlx-lm version)."""
    import mlx.core as mx

    try:
        import mlx_lm

        lm_version = getattr(mlx_lm, "__version__", "")
    except Exception:  # noqa: BLE001 - an absent mlx-lm is reported, not fatal here
        lm_version = "missing"
    dev = mx.default_device()
    kind = "gpu" if dev.type == mx.gpu else "cpu"
    if kind == "gpu":
        backend = "metal" if mx.metal.is_available() else "cuda"
        name = f"{backend} gpu"
    else:
        name = "cpu"
    return name, mx.__version__, lm_version


def _lines(read: Callable[[int], bytes], limit: int) -> Iterator[Optional[bytes]]:
    """Lines from a byte source (newline kept), None in place of a line longer than ``limit`` bytes
    (whose bytes are dropped as they come, never held)."""
    buf, skipping = b"", False
    while chunk := read(65536):
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line, buf = buf[:end + 1], buf[end + 1:]
            if skipping or len(line) > limit:
                skipping = False
                yield None
            else:
                yield line
        if len(buf) > limit:
            buf, skipping = b"", True
    if buf and not skipping:
        yield buf
    elif skipping:
        yield None


def _reader(ctx: Context, read: Callable[[int], bytes]) -> None:
    """Commands from stdin, one JSON object per line, until EOF. Survives any line: too long, not
    UTF-8, nested too deeply, numbers too long to read; each is answered with an error event."""
    try:
        for line in _lines(read, P.MAX_LINE_BYTES):
            if line is None:
                ctx.emit(P.Error(message=f"Bad command: a line longer than {P.MAX_LINE_BYTES} bytes was ignored. "
                                         f"Send one JSON object per line.", code="protocol"))
                continue
            if not line.strip():
                continue
            try:
                cmd = P.parse_command(line)
            except P.ProtocolError as e:
                ctx.emit(P.Error(message=f"Bad command: {e}. Send one JSON object per line.", code="protocol"))
                continue
            except Exception as e:  # noqa: BLE001 - no line may end the reader
                ctx.emit(P.Error(message=f"Bad command: {type(e).__name__}: {e}. Send one JSON object per line.",
                                 code="protocol"))
                continue
            if isinstance(cmd, P.Detach):
                ctx.detach()
                continue
            if isinstance(cmd, (P.Stop, P.Shutdown)):
                ctx.stop_requested.set()
            if isinstance(cmd, P.Shutdown):
                ctx.shutdown_requested.set()
            ctx.commands.put(cmd)
    except (OSError, ValueError):
        pass  # stdin went away: the same as EOF
    finally:
        ctx.stdin_closed.set()
        if ctx.detached:
            return  # nobody is left to command it: the job runs to its end, then the engine exits
        ctx.shutdown_requested.set()
        ctx.stop_requested.set()
        ctx.commands.put(P.Shutdown())


def _install_signals(ctx: Context) -> None:
    """SIGINT stops the job and keeps the engine (a CLI's Ctrl+C reaches it too); SIGTERM stops the job
    and ends the engine, also when it is idle."""

    def on_interrupt(signum, frame):
        ctx.stop_requested.set()
        ctx.signalled = True  # a Ctrl+C while idle is no mistake worth a warning
        ctx.commands.put(P.Stop())

    def on_terminate(signum, frame):
        ctx.stop_requested.set()
        ctx.shutdown_requested.set()
        ctx.commands.put(P.Shutdown())

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_terminate)
    # a reattached UI pauses and continues a detached run with these (protocol.Detach)
    signal.signal(signal.SIGUSR1, lambda signum, frame: ctx.commands.put(P.Pause()))
    signal.signal(signal.SIGUSR2, lambda signum, frame: ctx.commands.put(P.Resume()))


class FollowerContext(Context):
    """The context of a process that follows a shared run's leader (``engine.distributed``): the leader
    speaks for the run, so this one's events go nowhere and only its errors reach its stderr."""

    def __init__(self, rank: int):
        super().__init__(open(os.devnull, "w", encoding="utf-8"))
        self.rank = rank

    def emit(self, record: P.Record) -> None:
        super().emit(record)
        if isinstance(record, P.Error):
            print(f"process {self.rank}: {record.message}\n{record.traceback}".rstrip(), file=sys.stderr, flush=True)


def take_protocol_stream() -> TextIO:
    """Keep the real stdout for the protocol; send fd 1 (prints, C output) to stderr."""
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "w", encoding="utf-8", buffering=1)


def run(ctx: Context, start_reader: Optional[Callable[[], None]] = None) -> int:
    # handlers register themselves on import; one that fails to import leaves the others working
    broken = []
    for name in ("trainer", "preflight", "chat", "evaluate"):
        try:
            importlib.import_module(f"{__package__}.{name}")
        except Exception as e:  # noqa: BLE001
            broken.append((name, e, traceback.format_exc()))

    device, mlx_version, lm_version = describe_device()
    ctx.hello = P.Hello(
        protocol=P.PROTOCOL_VERSION, engine_version=__version__, mlx_version=mlx_version,
        mlx_lm_version=lm_version, device=device, blas=loaded_blas(), pid=os.getpid(),
        platform=f"{platform.system()} {platform.machine()}", processes=ctx.processes,
    )
    ctx.emit(ctx.hello)
    for name, e, tb in broken:
        ctx.emit(P.Error(message=f"The engine's {name} part failed to load ({type(e).__name__}: {e}); "
                                 f"reinstall farense-tui or report this.", traceback=tb, code="import"))
    ctx.emit(P.State(state="idle"))
    if start_reader is not None:
        start_reader()  # only now, so hello is always the first event
    while True:
        cmd = ctx.wait()
        if cmd is None or isinstance(cmd, P.Shutdown):
            return 0
        if isinstance(cmd, (P.Stop, P.Pause, P.Resume, P.Cancel)):
            ctx.stop_requested.clear()
            if not ctx.signalled:
                ctx.warn(f"Nothing is running to {IDLE_VERBS[type(cmd)]}: the engine is idle.", code="idle")
            ctx.signalled = False
            continue
        ctx.run_job(HANDLERS.get(cmd.type, _unsupported), cmd)
        if ctx.processes > 1:  # a shared run is the whole life of its processes; a failure tells mlx.launch
            return 1 if ctx.job_error else 0  # to end the others
        if ctx.shutdown_requested.is_set() or ctx.detached:
            return 0
        ctx.stop_requested.clear()
        ctx.emit(P.State(state="idle"))


def main() -> int:
    from .distributed import world

    out = take_protocol_stream()
    shared = world()
    ctx = Context(out) if shared.leader else FollowerContext(shared.rank)
    ctx.processes = shared.size
    _install_signals(ctx)
    # os.read on the descriptor: a reader blocked there holds no lock that interpreter shutdown waits for
    reader = threading.Thread(target=_reader, args=(ctx, lambda n: os.read(0, n)), daemon=True)
    try:
        return run(ctx, reader.start)
    except Exception as e:  # noqa: BLE001
        ctx.emit(P.Error(message=f"The engine failed: {type(e).__name__}: {e}", traceback=traceback.format_exc()))
        return 1
