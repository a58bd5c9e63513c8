"""What a user waits for in the app: the first frame, and the first token of the first reply.

    python bench/bench_ui.py [--repeats 5] [--keys 40 [--keys-only] [--poll]] [--code DIR]

- First frame: ``farense-tui`` started in a 120x40 tmux session, timed until the Preflight tab is on the
  screen (the screen is read every 10 ms); then again while a spinning process per core keeps them busy.
- First token: the app run headless with the real engine and the embedded default model; F5 opens the
  Chat tab (which loads the model in the background), and once it is loaded, the time from Enter to
  the first token on screen.
- With ``--keys N``, first: key to screen while the app trains the Farense config at full speed. N
  switches between the Config and Train tabs (F2/F3), each timed from the key given to tmux until the new
  tab's text is in the pane, and until the footer shows that tab's keys as well (the whole screen as the
  switch leaves it), read each time the app writes to the pane (tmux's %output; ``--poll``: every 2 ms);
  keys and looks go through one tmux control-mode client. And the UI process's share of a core meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

APP = Path(sys.executable).parent / "farense-tui"
CODE_ENV: list[str] = []  # --code: the app (and its engines) run another checkout's code


def spin(stop) -> None:
    while not stop.is_set():
        pass


def capture(name: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout


class ControlClient:
    """The pane's text, and keys to it, through one tmux control-mode client (``tmux -C``): a look or a key
    costs a line on a pipe, not a tmux process (one every 2 ms took some 40% of a core, beside the app it
    measures; one per key, 3-10 ms of a busy machine before the key reached tmux, which a terminal's
    keystroke does not wait for). With ``output``, tmux also tells the client each time the app writes to
    the pane (``%output``), so a look can wait for that instead of polling."""

    def __init__(self, name: str, output: bool = False) -> None:
        self.name = name
        flags = "ignore-size" if output else "no-output,ignore-size"
        self.proc = subprocess.Popen(["tmux", "-C", "attach", "-t", name, "-f", flags],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.pending = b""
        self.written = 0  # %output notifications read and not yet waited for
        self.proc.stdin.write(b"display -p SYNC\n")
        while "SYNC" not in self._reply():  # what attaching answers comes first
            pass

    def _line(self, timeout: float | None = None) -> bytes | None:
        """The client's next line; None if none came within ``timeout`` seconds."""
        while b"\n" not in self.pending:
            if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise SystemExit("the tmux control client ended")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line

    def _reply(self) -> str:
        """The next command's output: the lines between %begin and %end (or %error)."""
        body: list[bytes] | None = None
        while True:
            line = self._line()
            if line.startswith(b"%begin"):
                body = []
            elif line.startswith((b"%end", b"%error")) and body is not None:
                return b"\n".join(body).decode("utf-8", "replace")
            elif body is not None:
                body.append(line)
            elif line.startswith(b"%output"):
                self.written += 1

    def wait_written(self, timeout: float) -> None:
        """Until the app has written to the pane since the last wait (or ``timeout`` seconds pass)."""
        deadline = time.perf_counter() + timeout
        while not self.written:
            line = self._line(max(0.0, deadline - time.perf_counter()))
            if line is None:
                return
            if line.startswith(b"%output"):
                self.written += 1
        self.written = 0

    def __call__(self, name: str) -> str:
        self.proc.stdin.write(f"capture-pane -p -t {self.name}\n".encode())
        screen = self._reply()
        self.written = 0  # what was written before the capture ran is in it
        return screen

    def drain(self, seconds: float) -> None:
        """Read what tmux tells for ``seconds`` (a pause between keys): a control client that stops reading
        makes tmux stop reading the app's output once the pipe is full, and the app waits to write."""
        deadline = time.perf_counter() + seconds
        while (left := deadline - time.perf_counter()) > 0:
            self._line(left)  # no command waits for its reply meanwhile: these are notifications
        self.written = 0

    def send(self, key: str) -> None:
        """A key to the pane, as tmux's ``send-keys``; returns once tmux has taken it."""
        self.proc.stdin.write(f"send-keys -t {self.name} {key}\n".encode())
        self._reply()

    def close(self) -> None:
        self.proc.stdin.close()
        while os.read(self.proc.stdout.fileno(), 65536):  # what tmux still has for it, to its end
            pass
        self.proc.wait(5)


# key, a text of the tab it shows, the start of that tab's keys in the footer
SWITCHES = (("F2", "Effective batch size", "^o Load YAML"), ("F3", "Runs in the checkpoints folder", "s Start p Pause"))


def keys_while_training(samples: int, poll: bool = False) -> tuple[list[float], list[float], float]:
    """Key-to-screen latency (F2/F3 switching tabs) while the app trains the default Farense config at full
    speed: until the new tab's text is on the terminal, and until the footer shows that tab's keys too
    (the screen complete); and the UI process's share of a core meanwhile. The pane is read each time the
    app writes to it, or with ``poll`` every 2 ms (a look then costs tmux and this script some CPU every
    2 ms, on the cores the app and its engine share, and the time seen is up to 2 ms late)."""
    import psutil

    name = f"bench-keys-{os.getpid()}"
    runs = Path(tempfile.mkdtemp(prefix="bench-ui-runs-"))
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", "-c", str(ROOT),
                    "-e", "COLUMNS=120", "-e", "LINES=40", *CODE_ENV, str(APP), "--config", "configs/farense.yaml",
                    "--checkpoints", str(runs)], check=True)
    try:
        wait_for_text(name, "Run preflight (r)")
        subprocess.run(["tmux", "send-keys", "-t", name, "F3"])
        wait_for_text(name, "Start (s)")
        subprocess.run(["tmux", "send-keys", "-t", name, "s"])
        wait_for_text(name, "update 1/", timeout=600, fail="engine: failed")  # the engine trains
        pane_pid = int(subprocess.run(["tmux", "display", "-p", "-t", name, "#{pane_pid}"], capture_output=True,
                                      text=True).stdout.strip())
        ui = psutil.Process(pane_pid)
        look = ControlClient(name, output=not poll)
        cpu0, wall0 = sum(ui.cpu_times()[:2]), time.perf_counter()
        latencies, complete = [], []
        for i in range(samples):
            key, marker, keys = SWITCHES[i % 2]
            tic = time.perf_counter()
            look.send(key)
            text_at = None
            while True:  # each look checks both: the tab's text, and the footer's keys with it
                if not poll:
                    look.wait_written(timeout=0.05)
                screen = look(name)
                seen = time.perf_counter()
                if marker in screen:
                    text_at = text_at or seen
                    if keys in screen:
                        break
                if seen - tic > 60:
                    raise SystemExit(f"{key}: {marker!r} and {keys!r} not on screen after 60 s:\n{screen}")
                if poll:
                    time.sleep(0.002)
            latencies.append(text_at - tic)
            complete.append(seen - tic)
            if poll:
                time.sleep(0.2)
            else:
                look.drain(0.2)
        share = (sum(ui.cpu_times()[:2]) - cpu0) / (time.perf_counter() - wall0)
        look.close()
        subprocess.run(["tmux", "send-keys", "-t", name, "x"])
        wait_for_text(name, "engine: stopped", timeout=120)
        return latencies, complete, share
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        shutil.rmtree(runs, ignore_errors=True)


def wait_for_text(name: str, text: str, timeout: float = 60.0, poll: float = 0.01, fail: str | None = None,
                  look=capture) -> None:
    """Until ``text`` is on the screen; ends the bench with the screen if ``fail`` shows instead or time runs out."""
    deadline = time.perf_counter() + timeout
    while text not in (screen := look(name)):
        if fail and fail in screen:
            raise SystemExit(f"{fail!r} on screen:\n{screen}")
        if time.perf_counter() > deadline:
            raise SystemExit(f"{text!r} not on screen after {timeout} s:\n{screen}")
        time.sleep(poll)


def first_frame(busy: bool) -> float:
    name = f"bench-ui-{os.getpid()}"
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(os.cpu_count() or 2)] if busy else []
    for p in spinners:
        p.start()
    try:
        tic = time.perf_counter()
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", "-c", str(ROOT),
                        "-e", "COLUMNS=120", "-e", "LINES=40", *CODE_ENV, str(APP), "--config", "configs/farense.yaml"],
                       check=True)
        while True:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True,
                                    text=True).stdout
            if "Run preflight (r)" in screen:
                return time.perf_counter() - tic
            if time.perf_counter() - tic > 60:
                raise SystemExit(f"no first frame after 60 s:\n{screen}")
            time.sleep(0.01)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        stop.set()
        for p in spinners:
            p.join()


async def first_token() -> tuple[float, float]:
    """(seconds from F5 to the model loaded, seconds from Enter to the first token on screen)."""
    from farense_core import protocol as P
    from farense_tui.app import make_app
    from farense_tui.messages import EngineEvent, ReplyProgress

    seen: dict[str, float] = {}

    def hook(message) -> None:
        if isinstance(message, ReplyProgress) and "token" not in seen:
            seen["token"] = time.perf_counter()
        if isinstance(message, EngineEvent) and isinstance(message.event, P.ChatLoaded):
            seen["loaded"] = time.perf_counter()

    app = make_app(config_path=ROOT / "configs" / "farense.yaml", checkpoints_dir="/nonexistent-runs")
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        tic = time.perf_counter()
        await pilot.press("f5")
        while "loaded" not in seen:
            await pilot.pause(0.01)
        prompt = app.query_one("#prompt")
        prompt.value = "Em que ano foi fundado o Farense?"
        enter = time.perf_counter()
        await pilot.press("enter")
        while "token" not in seen:
            await pilot.pause(0.005)
        app.chat_tab.action_stop_reply()
        return seen["loaded"] - tic, seen["token"] - enter


def spread(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return (f"p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keys", type=int, default=0, help="also time this many tab switches while training")
    ap.add_argument("--keys-only", action="store_true", help="with --keys: only the tab switches")
    ap.add_argument("--poll", action="store_true", help="with --keys: read the pane every 2 ms, not each time "
                    "the app writes to it (how this script read it until 2026-12-01)")
    ap.add_argument("--code", help="run the app from this checkout of the project (say, a worktree of the commit "
                    "before), put first on its PYTHONPATH: runs with and without it, alternating, compare the two")
    args = ap.parse_args()
    if args.code:
        CODE_ENV[:] = ["-e", f"PYTHONPATH={Path(args.code).resolve()}"]
    if args.keys:
        latencies, complete, share = keys_while_training(args.keys, poll=args.poll)
        looks = "every 2 ms" if args.poll else "as the app writes"
        print(f"key to screen while training ({len(latencies)} F2/F3 switches, keys and looks ({looks}) through a "
              f"tmux control client), UI process {share:.0%} of a core")
        for what, seconds in (("the tab's text", latencies), ("and its keys in the footer", complete)):
            print(f"  {what + ':':28}{spread(seconds)}")
            for key, tab in (("F2", "Config"), ("F3", "Train")):
                print(f"    {key} ({tab}){'':17}{spread(seconds[key == 'F3'::2])}")
        if args.keys_only:
            return 0
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed for the first-frame figure")
    first_frame(False)  # warm the file cache
    idle = [first_frame(False) for _ in range(args.repeats)]
    busy = [first_frame(True) for _ in range(args.repeats)]
    tokens = [asyncio.run(first_token()) for _ in range(max(2, args.repeats // 2))]
    print(f"\napp waits, {platform.node()} ({platform.machine()}, {os.cpu_count()} cores), {datetime.date.today()}, "
          f"median (max) of {args.repeats}")
    print(f"first frame, idle machine           {statistics.median(idle):5.2f} s ({max(idle):.2f})")
    print(f"first frame, both cores busy        {statistics.median(busy):5.2f} s ({max(busy):.2f})")
    print(f"Chat tab: F5 to the model loaded    {statistics.median(t[0] for t in tokens):5.2f} s")
    print(f"Chat tab: Enter to the first token  {statistics.median(t[1] for t in tokens):5.2f} s "
          f"({max(t[1] for t in tokens):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
