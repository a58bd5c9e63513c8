"""``farense-tui chat`` end to end: the CLI process (no mlx) drives a real engine on the tiny model."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from farense_core import protocol as P
from farense_tui.commands.chat import side_by_side

pytestmark = pytest.mark.slow  # chat command subprocesses

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def chat_cli(*args, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farense_tui.cli", "chat", *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def expected_reply(model, message, adapter=None, **settings) -> str:
    from engine.chat import ChatSession, ReplySettings

    session = ChatSession.load(str(model), adapter=str(adapter) if adapter else None)
    return session.reply(message, ReplySettings(**settings)).text


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    from tiny_model import make_adapter

    return make_adapter(tiny_model, tmp_path_factory.mktemp("cli") / "adapter", num_layers=4, seed=5)


@pytest.mark.slow
def test_one_shot_prints_the_reply_and_exits(tiny_model):
    done = chat_cli("--model", tiny_model, "--prompt", "Olá Farense", "--temp", "0", "--max-tokens", "12")
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_reply(tiny_model, "Olá Farense", temperature=0.0, max_tokens=12) + "\n"


@pytest.mark.slow
def test_one_shot_streams_on_a_terminal(tiny_model):
    """On a terminal the tokens are written as they come; the text is the same."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "farense_tui.cli", "chat", "--model", str(tiny_model), "--prompt", "Olá",
         "--temp", "0", "--max-tokens", "10"],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE, env=ENV)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(120) == 0, proc.stderr.read()
    os.close(leader)
    text = out.decode("utf-8", "replace").replace("\r\n", "\n")
    assert text == expected_reply(tiny_model, "Olá", temperature=0.0, max_tokens=10) + "\n"


@pytest.mark.slow
def test_missing_model_is_one_sentence_and_exit_1(tmp_path):
    done = chat_cli("--model", tmp_path / "no-such-model", "--prompt", "Olá")
    assert done.returncode == 1
    err = done.stderr.strip()
    assert "does not exist" in err and "\n" not in err and "Traceback" not in err
    assert done.stdout == ""


def test_a_bad_sampler_setting_is_one_sentence_before_anything_loads():
    done = chat_cli("--prompt", "Olá", "--temp", "-1", "--model", "/nowhere", timeout=30)
    assert done.returncode == 2  # refused before the engine starts: the missing model is never reached
    assert done.stderr.strip() == "farense-tui chat: temperature is -1.0, but it must be 0 (greedy) or more."
    done = chat_cli("--prompt", "Olá", "--top-p", "0", "--repetition-penalty", "0.5", "--model", "/nowhere", timeout=30)
    assert "does not exist" in done.stderr  # 0 turns top-p off and 0.5 is a (weak) penalty: both accepted


def test_a_message_that_fails_leaves_the_conversation_going(monkeypatch, capsys):
    """One message's error is one sentence; the next message is answered."""
    import argparse
    import io

    from farense_tui.commands import chat as cli

    class Chat:
        asked = []

        def reply(self, message, settings, on_token):
            self.asked.append(message)
            if message == "Olá":
                raise cli.ChatFailed("The model could not answer this message.")
            return P.ReplyDone(id="r", text="Faro.", finish_reason="stop")

    monkeypatch.setattr(sys, "stdin", io.StringIO("Olá\nOutra\n"))
    cli.converse(Chat(), cli.Terminal(), argparse.Namespace(compare=False), {})
    out = capsys.readouterr()
    assert Chat.asked == ["Olá", "Outra"]
    assert out.err.strip() == "farense-tui chat: The model could not answer this message."
    assert out.out == "Faro.\n"


def test_compare_needs_an_adapter():
    done = chat_cli("--prompt", "Olá", "--compare", timeout=30)
    assert done.returncode == 1
    assert "--compare needs --adapter" in done.stderr and done.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_conversation_from_stdin_keeps_history_until_reset(tiny_model):
    done = chat_cli("--model", tiny_model, "--temp", "0", "--max-tokens", "6",
                    stdin="Olá\n\n/reset\nOlá\nOutra\n/quit\nnever answered\n")
    assert done.returncode == 0, done.stderr
    replies = done.stdout.splitlines()
    assert len(replies) == 3
    assert replies[0] == replies[1] == expected_reply(tiny_model, "Olá", temperature=0.0, max_tokens=6)


@pytest.mark.slow
def test_compare_labels_the_base_and_the_adapter(tiny_model, adapter):
    done = chat_cli("--model", tiny_model, "--adapter", adapter, "--prompt", "Olá", "--temp", "0",
                    "--max-tokens", "8", "--compare")
    assert done.returncode == 0, done.stderr
    base = expected_reply(tiny_model, "Olá", temperature=0.0, max_tokens=8)
    tuned = expected_reply(tiny_model, "Olá", adapter=adapter, temperature=0.0, max_tokens=8)
    assert base != tuned
    assert done.stdout == f"── base ──\n{base}\n── base + adapter adapter ──\n{tuned}\n"


def test_side_by_side_wraps_each_column():
    out = side_by_side([("base", "one two three four five"), ("tuned", "short\nsecond line")], width=23)
    assert out.splitlines() == [
        "base       │ tuned",
        "────       │ ─────",
        "one two    │ short",
        "three four │ second",
        "five       │ line",
    ]


def test_the_chat_command_does_not_import_mlx():
    code = "import sys, farense_tui.commands.chat; assert not any(m.startswith('mlx') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, timeout=60)


def test_a_one_shot_does_not_wait_for_the_engines_teardown(tmp_path, monkeypatch, capsys):
    """The answer is out: the command returns while the engine still tears down (seconds on a GPU, with
    its libraries unloading); the engine ends on its own."""
    import time

    from farense_tui import engine_client
    from farense_tui.commands import chat as cli

    slow = tmp_path / "slow_engine.py"  # answers, then takes 15 s to end once told to shut down
    slow.write_text(
        "import sys, time\n"
        "sys.path.insert(0, %r)\n"
        "from farense_core import protocol as P\n"
        "for line in sys.stdin:\n"
        "    cmd = P.parse_command(line)\n"
        "    if isinstance(cmd, P.Shutdown):\n"
        "        break\n"
        "    if isinstance(cmd, P.ChatLoad):\n"
        "        print(P.ChatLoaded(model='m').to_line(), flush=True)\n"
        "    if isinstance(cmd, P.Chat):\n"
        "        print(P.Token(id=cmd.id, text='Faro.').to_line(), flush=True)\n"
        "        print(P.ReplyDone(id=cmd.id, text='Faro.', finish_reason='stop').to_line(), flush=True)\n"
        "    print(P.Finished(command=cmd.type, id=getattr(cmd, 'id', '')).to_line(), flush=True)\n"
        "time.sleep(15)\n" % str(engine_client.__file__.rsplit("/farense_tui/", 1)[0]))
    started = []
    real = engine_client.EngineProcess

    def engine(*a, **kw):
        started.append(real(argv=[sys.executable, str(slow)]))
        return started[-1]

    monkeypatch.setattr(cli, "EngineProcess", engine)
    tic = time.perf_counter()
    assert cli.main(["--model", "m", "--prompt", "Onde joga o Farense?"]) == 0
    assert time.perf_counter() - tic < 10
    assert capsys.readouterr().out == "Faro.\n"
    assert started[0].proc.wait(30) == 0  # it ended by itself
