"""The chat session: streaming, cancel, adapter switching, sampler settings, history, and the
protocol round trip through a real engine process. All on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")

from farense_core import protocol as P  # noqa: E402
from engine.chat import ChatError, ChatSession, ReplySettings  # noqa: E402
from enginetools import EngineRun  # noqa: E402
from tiny_model import make_adapter  # noqa: E402

GREEDY = dict(temperature=0.0, repetition_penalty=1.0)


def logits(model, tokens) -> mx.array:
    out = model(mx.array(tokens)[None])
    mx.eval(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(tiny_model, root / "a", num_layers=2, seed=1),
        "b": make_adapter(tiny_model, root / "b", num_layers=4, rank=8, seed=2,
                          keys=["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]),
    }


@pytest.fixture(scope="module")
def session(tiny_model):
    return ChatSession.load(str(tiny_model))


@pytest.fixture(autouse=True)
def clean_session(request):
    """Tests sharing the module's session start from the bare base and an empty history."""
    yield
    if "session" in request.fixturenames:
        s = request.getfixturevalue("session")
        s.set_adapter(None)
        s.reset()


def reference_text(model_path, adapter, tokens, max_tokens) -> str:
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(model_path), adapter_path=str(adapter) if adapter else None)
    return mlx_lm.generate(model, tokenizer, tokens, max_tokens=max_tokens)


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize("use_adapter", [False, True])
def test_streamed_tokens_make_the_reply_and_match_mlx_lm(session, tiny_model, adapters, use_adapter):
    adapter = adapters["a"] if use_adapter else None
    session.set_adapter(str(adapter) if adapter else None)
    settings = ReplySettings(max_tokens=24, **GREEDY)
    tokens = session.encode(session.messages_for("Quando foi fundado o Farense?", settings))
    pieces: list[str] = []
    reply = session.reply("Quando foi fundado o Farense?", settings, on_token=pieces.append)

    assert pieces and all(pieces)
    assert "".join(pieces) == reply.text
    assert reply.text == reference_text(tiny_model, adapter, tokens, 24)
    assert reply.prompt_tokens == len(tokens)
    assert reply.finish_reason in ("stop", "length")
    assert reply.generation_tokens >= 1 and reply.generation_tps > 0
    assert 0 < reply.time_to_first_token < 30
    assert reply.peak_memory > 0


def test_prompt_uses_the_chat_template(session):
    settings = ReplySettings(system="Responde em português.")
    tokens = session.encode(session.messages_for("Olá", settings))
    text = session.tokenizer.decode(tokens)
    assert text == ("<|im_start|>system\nResponde em português.<|im_end|>\n"
                    "<|im_start|>user\nOlá<|im_end|>\n<|im_start|>assistant\n")


def test_max_tokens_ends_with_length(session):
    reply = session.reply("Olá", ReplySettings(max_tokens=3, **GREEDY))
    assert reply.finish_reason == "length"
    assert reply.generation_tokens == 3


# --------------------------------------------------------------------- cancel


def test_should_cancel_stops_after_the_first_token(session):
    pieces: list[str] = []
    asked = []

    def should_cancel():
        asked.append(True)
        return True

    reply = session.reply("Olá", ReplySettings(max_tokens=500, **GREEDY), on_token=pieces.append,
                          should_cancel=should_cancel)
    assert reply.finish_reason == "cancelled"
    assert reply.generation_tokens == 1 and len(asked) == 1
    assert reply.text == "".join(pieces)


# ---------------------------------------------------------------- adapters


@pytest.mark.parametrize("quantized", [False, True])
def test_switching_adapters_gives_a_fresh_loads_logits(tiny_model, tiny_quantized_model, tmp_path, quantized):
    import mlx_lm

    base_path = tiny_quantized_model if quantized else tiny_model
    a = make_adapter(base_path, tmp_path / "a", num_layers=2, seed=1)
    b = make_adapter(base_path, tmp_path / "b", num_layers=4, rank=8, seed=2,
                     keys=["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"])
    session = ChatSession.load(str(base_path), adapter=str(a), base_dtype="keep")  # as stored, like mlx_lm.load
    tokens = session.encode([{"role": "user", "content": "O Farense venceu?"}])

    def fresh(adapter):
        model, _ = mlx_lm.load(str(base_path), adapter_path=str(adapter) if adapter else None)
        return logits(model, tokens)

    expected = {"a": fresh(a), "b": fresh(b), None: fresh(None)}
    assert not mx.array_equal(expected["a"], expected[None])
    assert not mx.array_equal(expected["b"], expected["a"])

    assert mx.array_equal(logits(session.model, tokens), expected["a"])
    for name in ("b", None, "a", None, "b"):
        session.set_adapter(str({"a": a, "b": b}[name]) if name else None)
        assert session.adapter == (str(Path({"a": a, "b": b}[name]).resolve()) if name else None)
        assert mx.array_equal(logits(session.model, tokens), expected[name]), name


def test_switching_gives_the_same_greedy_reply_as_a_fresh_load(session, tiny_model, adapters):
    settings = ReplySettings(max_tokens=16, keep_history=False, **GREEDY)
    session.set_adapter(str(adapters["b"]))
    switched = session.reply("Resume a época", settings).text
    fresh = ChatSession.load(str(tiny_model), adapter=str(adapters["b"])).reply("Resume a época", settings).text
    assert switched == fresh


def test_a_run_folder_uses_its_best_adapter(session, adapters, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(adapters["a"], run / "adapters")
    session.set_adapter(str(run))
    assert session.adapter == str((run / "adapters").resolve())


def test_bad_adapters_are_one_sentence_and_leave_the_base(session, tiny_model, tmp_path):
    tokens = session.encode([{"role": "user", "content": "x"}])
    base = logits(session.model, tokens)

    with pytest.raises(ChatError, match="does not exist"):
        session.set_adapter(str(tmp_path / "nowhere"))
    with pytest.raises(ChatError, match="No adapter found"):
        session.set_adapter(str(tmp_path))

    # weights for layers the config does not wrap: mlx-lm rejects them
    bad = make_adapter(tiny_model, tmp_path / "bad", num_layers=4)
    (bad / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}}))
    with pytest.raises(ChatError, match="does not fit") as err:
        session.set_adapter(str(bad))
    assert "\n" not in str(err.value)
    assert session.adapter is None
    assert mx.array_equal(logits(session.model, tokens), base)


def test_missing_model_is_one_sentence(tmp_path):
    with pytest.raises(ChatError, match="does not exist"):
        ChatSession.load(str(tmp_path / "no-model"))
    with pytest.raises(ChatError, match="no config.json"):
        ChatSession.load(str(tmp_path))


# ----------------------------------------------------------------- sampling


def test_sampler_settings_reach_mlx_lm(tiny_model):
    """A reply with these settings is what mlx-lm's own generate gives with the same sampler, seed and
    prompt; and changing a setting changes the reply."""
    from mlx_lm.generate import generate
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    session = ChatSession.load(str(tiny_model))
    settings = dict(temperature=0.9, top_p=0.8, min_p=0.05, repetition_penalty=1.3, repetition_context_size=8,
                    max_tokens=24, keep_history=False)
    prompt = session.encode([{"role": "user", "content": "Olá"}])

    def theirs(seed, temperature=0.9, penalty=1.3):
        mx.random.seed(seed)
        return generate(session.model, session.tokenizer, prompt, max_tokens=24,
                        sampler=make_sampler(temp=temperature, top_p=0.8, min_p=0.05),
                        logits_processors=make_logits_processors(repetition_penalty=penalty,
                                                                 repetition_context_size=8))

    for seed in (1, 2, 3):
        assert session.reply("Olá", ReplySettings(**settings, seed=seed)).text == theirs(seed)
    assert any(theirs(s) != theirs(s, temperature=0.0) for s in (1, 2, 3))
    assert any(theirs(s) != theirs(s, penalty=1.0) for s in (1, 2, 3))


def test_a_seed_makes_sampled_replies_reproducible(session):
    settings = ReplySettings(temperature=1.5, top_p=1.0, min_p=0.0, max_tokens=20, seed=11, keep_history=False)
    first = session.reply("Olá", settings).text
    again = session.reply("Olá", settings).text
    other = [session.reply("Olá", ReplySettings(**{**vars(settings), "seed": s})).text for s in (12, 13, 14)]
    assert first == again
    assert any(text != first for text in other)


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("top_p", 1.5), ("min_p", 1.0), ("repetition_penalty", 0.0),
    ("repetition_context_size", 0), ("max_tokens", 0),
])
def test_bad_settings_are_rejected_before_generating(session, field, value):
    from farense_core.sampling import BY_NAME

    with pytest.raises(ChatError, match=f"^{BY_NAME[field].label} is {value}, but it must be"):
        session.reply("Olá", ReplySettings(**{field: value}))
    assert session.history == []


def test_every_sampler_default_comes_from_one_place():
    """The engine's settings, the protocol's chat command, the chat command's flags and the exported
    README all say what farense_core.sampling says; and those defaults sample, with a penalty."""
    from engine.export import SAMPLING_NOTE
    from farense_core.sampling import DEFAULTS
    from farense_tui.commands.chat import parse_args

    chat, settings, flags = P.Chat(id="x", message="y"), ReplySettings(), parse_args([])
    for name, value in DEFAULTS.items():
        assert getattr(chat, name) == getattr(settings, name) == value
        assert getattr(flags, name) is None  # unset flags leave the engine its defaults
    assert f"make_sampler({DEFAULTS['temperature']}, {DEFAULTS['top_p']}, {DEFAULTS['min_p']})" in SAMPLING_NOTE
    assert f"repetition_penalty={DEFAULTS['repetition_penalty']}" in SAMPLING_NOTE
    assert DEFAULTS["temperature"] > 0 and DEFAULTS["repetition_penalty"] > 1  # greedy loops; penalties break them


# ------------------------------------------------------------------ history


def test_history_is_kept_and_reset(session):
    settings = ReplySettings(max_tokens=4, **GREEDY)
    first = session.reply("Primeira pergunta", settings)
    assert session.history == [{"role": "user", "content": "Primeira pergunta"},
                               {"role": "assistant", "content": first.text}]
    second = session.reply("Segunda", settings)
    assert len(session.history) == 4
    assert second.prompt_tokens > first.prompt_tokens

    alone = session.reply("Segunda", ReplySettings(max_tokens=4, keep_history=False, **GREEDY))
    assert len(session.history) == 4
    assert alone.prompt_tokens < second.prompt_tokens

    session.reset()
    assert session.history == []
    assert session.reply("Primeira pergunta", settings).prompt_tokens == first.prompt_tokens


# ------------------------------------------------------ through the engine


@pytest.fixture(scope="module")
def engine():
    e = EngineRun()
    e.until(lambda ev: ev.type == "hello")
    yield e
    e.close()


def of_type(events, kind):
    return [e for e in events if e.type == kind]


@pytest.mark.slow
def test_protocol_round_trip(engine, tiny_model, adapters):
    early = engine.request(P.Chat(id="early", message="Olá"))
    error = of_type(early, "error")[-1]
    assert "chat_load" in error.message and "\n" not in error.message
    assert (early[-1].status, early[-1].message) == ("failed", error.message)

    events = engine.request(P.ChatLoad(model=str(tiny_model), adapter=str(adapters["a"])))
    assert events[-1].status == "ok", events
    assert of_type(events, "chat_loaded")[-1].adapter == str(adapters["a"].resolve())

    events = engine.request(P.Chat(id="r1", message="Quando foi fundado o Farense?", max_tokens=20, **GREEDY))
    tokens = of_type(events, "token")
    done = of_type(events, "reply_done")[-1]
    assert tokens and all(t.id == "r1" for t in tokens)
    assert "".join(t.text for t in tokens) == done.text
    assert done.finish_reason in ("stop", "length") and done.generation_tokens > 0

    session = ChatSession.load(str(tiny_model), adapter=str(adapters["a"]))
    prompt = session.encode([{"role": "user", "content": "Quando foi fundado o Farense?"}])
    assert done.text == reference_text(tiny_model, adapters["a"], prompt, 20)

    # switch to the bare base and reset: the same question gives the base's greedy answer
    assert of_type(engine.request(P.ChatAdapter(adapter=None)), "chat_loaded")[-1].adapter is None
    assert engine.request(P.ChatReset())[-1].status == "ok"
    done = of_type(engine.request(P.Chat(id="r2", message="Quando foi fundado o Farense?", max_tokens=20,
                                         **GREEDY)), "reply_done")[-1]
    assert done.text == reference_text(tiny_model, None, prompt, 20)


@pytest.mark.slow
def test_cancel_through_the_engine_stops_at_once_and_later_commands_wait(engine, tiny_model):
    assert engine.request(P.ChatLoad(model=str(tiny_model)))[-1].status == "ok"

    def cancel_on_first_token(event):
        if event.type == "token" and event.id == "long" and not sent:
            sent.append(True)
            engine.send(P.Cancel(id="other"))  # another reply's cancel stops nothing
            engine.send(P.Chat(id="next", message="Olá", max_tokens=3, **GREEDY))
            engine.send(P.Cancel(id="long"))

    sent: list = []
    events = engine.request(P.Chat(id="long", message="Olá", max_tokens=100_000, **GREEDY),
                            on_event=cancel_on_first_token)
    done = of_type(events, "reply_done")[-1]
    assert done.id == "long" and done.finish_reason == "cancelled" and events[-1].status == "cancelled"
    assert done.generation_tokens < 5_000
    assert "".join(e.text for e in events if e.type == "token") == done.text

    # the chat sent mid-reply is answered afterwards, as its own job
    engine.until(lambda e: e.type == "finished" and e.id == "next")
    after = engine.events[engine.events.index(events[-1]) + 1:]
    assert of_type(after, "reply_done")[-1].id == "next" and of_type(after, "reply_done")[-1].generation_tokens == 3


def test_the_default_model_not_installed_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("FARENSE_TUI_HOME", str(tmp_path))
    with pytest.raises(ChatError, match="farense-tui model default"):
        ChatSession.load(None)
    with pytest.raises(ChatError, match="farense-tui model default"):
        ChatSession.load("default")


def test_auto_base_dtype_computes_a_quantized_base_in_float32_on_cpu(tiny_quantized_model, monkeypatch):
    import mlx.nn as nn
    import mlx_lm

    if mx.default_device().type != mx.cpu:
        pytest.skip("the float32 copy is for CPU backends")
    session = ChatSession.load(str(tiny_quantized_model))
    assert session.base_dtype == "float32"
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in session.model.named_modules())
    stored, _ = mlx_lm.load(str(tiny_quantized_model))
    tokens = session.encode([{"role": "user", "content": "O Farense venceu?"}])
    # dequantizing is exact: the same weights, computed in float32
    assert mx.allclose(logits(session.model, tokens), logits(stored, tokens), atol=1e-3).item()

    import psutil

    class Tight:
        available = 1024  # bytes: no room for a float32 copy
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight())
    kept = ChatSession.load(str(tiny_quantized_model))
    assert kept.base_dtype == "4-bit"
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in kept.model.named_modules())


def test_the_next_turn_reuses_the_conversation_kv_cache(tiny_model):
    """Only the new part of the prompt goes through the model, and the cached keys and values give
    the same next-token logits as processing the whole conversation afresh."""
    from mlx_lm.models.cache import make_prompt_cache

    session = ChatSession.load(str(tiny_model))
    first = session.reply("Qual foi o resultado do Farense?", ReplySettings(max_tokens=6, **GREEDY))
    assert first.cached_tokens == 0
    prompt = session.encode(session.messages_for("E em casa?", ReplySettings()))
    cache, reused = session._reusable_cache(prompt)
    assert 0 < reused < len(prompt)
    assert prompt[:reused] == session._cached[:reused]
    incremental = session.model(mx.array(prompt[reused:])[None], cache=cache)[:, -1]
    whole = session.model(mx.array(prompt)[None], cache=make_prompt_cache(session.model))[:, -1]
    assert mx.allclose(incremental, whole, atol=1e-4).item()

    session = ChatSession.load(str(tiny_model))
    session.reply("Qual foi o resultado do Farense?", ReplySettings(max_tokens=6, **GREEDY))
    held = list(session._cached)  # the first exchange's tokens, prompt and reply
    prompt = session.encode(session.messages_for("E em casa?", ReplySettings()))
    shared = next(i for i, (a, b) in enumerate(zip(held + [None], prompt)) if a != b)
    second = session.reply("E em casa?", ReplySettings(max_tokens=6, **GREEDY))
    assert second.cached_tokens == shared and second.prompt_tokens == len(prompt)
    first_prompt = session.encode([{"role": "user", "content": "Qual foi o resultado do Farense?"}])
    assert shared > len(first_prompt)  # the first prompt and part of its reply, not only the template


def test_switching_adapter_or_a_new_prompt_drops_what_does_not_match(tiny_model, tmp_path):
    session = ChatSession.load(str(tiny_model))
    session.reply("Olá", ReplySettings(max_tokens=4, **GREEDY))
    assert session._cached
    session.set_adapter(str(make_adapter(tiny_model, tmp_path / "a", num_layers=2)))
    assert session._cache is None and session._cached == []  # other weights, stale keys and values
    reply = session.reply("Olá", ReplySettings(max_tokens=4, keep_history=False, **GREEDY))
    assert reply.cached_tokens == 0
    # a prompt that shares only the template's start reuses exactly that much
    held = list(session._cached)
    prompt = session.encode([{"role": "user", "content": "Outra pergunta"}])
    shared = next(i for i, (a, b) in enumerate(zip(held, prompt)) if a != b)
    other = session.reply("Outra pergunta", ReplySettings(max_tokens=4, keep_history=False, **GREEDY))
    assert other.cached_tokens == shared


def test_a_full_fine_tune_loads_into_a_base_kept_quantized(tiny_quantized_model, tiny_data, tmp_path):
    """A full fine-tune trains a float copy of a 4-bit base; chat with the base kept 4-bit (as on a GPU)
    must load its weights into a float copy too, not fail on packed shapes."""
    from enginetools import base_config, train_in_process

    run = tmp_path / "run"
    done, _ = train_in_process(base_config(tiny_quantized_model, tiny_data, fine_tune_type="full", num_layers=-1,
                                           iters=2, eval_samples=0, best_by="val_loss"), run)
    assert done.status == "completed"
    kept = ChatSession.load(str(tiny_quantized_model), base_dtype="keep")
    assert kept.base_dtype == "4-bit"
    kept.set_adapter(str(run / "final"))
    assert kept.base_dtype == "float32"
    fresh = ChatSession.load(str(tiny_quantized_model), str(run / "final"), base_dtype="auto")
    tokens = kept.encode([{"role": "user", "content": "O Farense venceu?"}])
    assert mx.allclose(logits(kept.model, tokens), logits(fresh.model, tokens), atol=1e-4).item()
    kept.set_adapter(None)  # back to the stored base
    assert kept.adapter is None
