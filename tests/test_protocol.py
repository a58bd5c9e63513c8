import dataclasses
import json

import pytest

from farense_core import protocol as P


def sample_records():
    mem = P.Memory(mlx_active=1, mlx_cache=2, mlx_peak=3, rss=4, system_available=5, system_total=6)
    return [
        P.Hello(protocol=P.PROTOCOL_VERSION, engine_version="0.1", mlx_version="0.32", mlx_lm_version="0.32",
                device="cpu", blas="openblas", pid=7),
        P.Config(config={"batch_size": 4, "lora_parameters": {"rank": 8}}, run_dir="r"),
        P.Data(format="chat", train_samples=10, valid_samples=2, train_tokens={"max": 9}),
        P.Model(path="m", parameters=100, trainable_parameters=10, quantization={"bits": 4, "group_size": 32}),
        P.Step(step=1, total_steps=10, epoch=1, epoch_progress=0.1, loss=2.5, learning_rate=1e-4, tokens=33,
               trained_tokens=33, tokens_per_second=100.0, iterations_per_second=3.0, elapsed=0.3, eta=2.7,
               memory=mem),
        P.Eval(step=2, epoch=1, val_loss=2.0, val_time=0.1, best_val_loss=2.0, is_best=True),
        P.Checkpoint(step=2, epoch=1, path="p"),
        P.MemoryEvent(memory=mem, action="cleared_cache"),
        P.Warning(message="w"),
        P.Error(message="e", traceback="Traceback..."),
        P.Done(status="completed", summary={"updates": 10}),
        P.Train(config={"model": "m"}, run_dir="r", resume=True),
        P.Pause(), P.Resume(), P.Stop(), P.Shutdown(),
        P.Chat(id="1", message="olá", seed=None),
    ]


@pytest.mark.parametrize("record", sample_records(), ids=lambda r: r.type)
def test_round_trip(record):
    line = record.to_line()
    assert "\n" not in line
    parse = P.parse_command if record.type in P.COMMANDS else P.parse_event
    assert parse(line) == record
    assert parse(line.encode()) == record


def test_every_kind_is_registered_once():
    assert not set(P.EVENTS) & set(P.COMMANDS)
    for cls in list(P.EVENTS.values()) + list(P.COMMANDS.values()):
        assert dataclasses.is_dataclass(cls) and cls.type


def test_unknown_fields_are_ignored_for_forward_compatibility():
    line = json.dumps({"type": "warning", "message": "x", "added_later": 1})
    assert P.parse_event(line) == P.Warning(message="x")


@pytest.mark.parametrize("line, fragment", [
    ("", "empty"),
    ("not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"message": "x"}', "no string 'type'"),
    ('{"type": "nope"}', "unknown event type"),
    ('{"type": "warning"}', "missing the field 'message'"),
    ('{"type": "step", "step": "one"}', "step.step must be int"),
    ('{"type": "eval", "step": true, "epoch": 1, "val_loss": 1, "val_time": 1, "best_val_loss": 1}', "not a boolean"),
    ('{"type": "memory", "memory": 5}', "must be an object"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_malformed_lines_are_rejected(line, fragment):
    with pytest.raises(P.ProtocolError, match=fragment):
        P.parse_event(line)


def test_oversized_line_is_rejected():
    with pytest.raises(P.ProtocolError, match="exceeds"):
        P.parse_event("x" * (P.MAX_LINE_BYTES + 1))


def test_commands_and_events_are_separate_namespaces():
    with pytest.raises(P.ProtocolError, match="unknown command type"):
        P.parse_command(P.Warning(message="x").to_line())


def test_lines_are_strict_json_and_non_finite_numbers_come_back():
    import json
    import math

    step = P.Step(step=3, total_steps=9, epoch=1, epoch_progress=0.3, loss=float("nan"), learning_rate=1e-3,
                  tokens=10, trained_tokens=30, tokens_per_second=float("inf"), iterations_per_second=1.0,
                  elapsed=1.0, eta=2.0, memory=P.Memory())
    line = step.to_line()
    strict = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert strict["loss"] is None and strict["nonfinite"] == {"loss": "nan", "tokens_per_second": "inf"}
    back = P.parse_event(line)
    assert math.isnan(back.loss) and back.tokens_per_second == math.inf and back.tokens == 10
    done = P.Done(status="diverged", summary={"final_loss": float("-inf"), "losses": [1.0, float("nan")]})
    back = P.parse_event(done.to_line())
    assert back.summary["final_loss"] == -math.inf and back.summary["losses"][0] == 1.0
    assert math.isnan(back.summary["losses"][1])
    assert "nonfinite" not in P.Eval(step=1, epoch=1, val_loss=1.5, val_time=0.1, best_val_loss=1.5,
                                     is_best=True).to_line()


def test_lines_too_deep_or_too_long_to_read_are_protocol_errors():
    with pytest.raises(P.ProtocolError, match="nests too deeply"):
        P.parse_command("[" * 100_000)
    with pytest.raises(P.ProtocolError, match="cannot be read"):
        P.parse_command('{"type": "stop", "x": ' + "1" * 5000 + "}")
    with pytest.raises(P.ProtocolError, match="not UTF-8"):
        P.parse_command(b'{"type": "stop"\xff}')


def test_the_engine_reader_splits_lines_and_drops_oversized_ones():
    from engine.server import _lines

    data = iter([b'{"a": 1}\n{"b"', b': 2}\n' + b"x" * 50, b"x" * 50 + b"\nlast"])
    assert list(_lines(lambda n: next(data, b""), limit=64)) == [b'{"a": 1}\n', b'{"b": 2}\n', None, b"last"]
