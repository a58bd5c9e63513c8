"""Export to other tools (issue 14): GGUF read back by our importer with the same logits, its metadata,
the self-check that refuses an export which lost what the adapter answers, the Ollama Modelfile's
template against the model's own, LM Studio's layout, `farense-tui serve` through the official openai
client, and a real llama.cpp answering like our chat."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from farense_tui.engine_client import engine_env
from tiny_model import make_adapter, write_chat_data

from engine.export import ExportError, export

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Quando foi fundado o Farense?"}]


def make_run(base: Path, folder: Path, data: Path | None = None, *, seed: int = 8) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"model: {base}\nnum_layers: 2\n" + (f"data: {data}\n" if data else ""))
    make_adapter(base, folder / "adapters", num_layers=2, rank=8, seed=seed)
    return folder


def fused_float(base: Path, adapter: Path):
    from engine.export import load_fused

    model, tokenizer, config, _ = load_fused(str(base), adapter, dequantize=True)
    return model, tokenizer, config


def logits(model, tokenizer) -> np.ndarray:
    tokens = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    return np.array(model(mx.array(tokens)[None]).astype(mx.float32))


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0"])
def test_gguf_read_back_by_our_importer_gives_the_logits_the_file_means(tiny_model, tmp_path, quant):
    """f16: the fused float model's logits within half precision. q8_0 / q4_0: the logits of the fused model with
    each weight rounded through gguf's own quantizer and dequantizer (what the file means), far closer to them
    than the rounding moved them."""
    import mlx_lm
    from gguf.quants import dequantize, quantize
    from mlx.utils import tree_flatten, tree_unflatten

    from engine.gguf_export import tensor_type
    from engine.gguf_import import import_gguf
    from mlx_lm.gguf import translate_weight_names

    run = make_run(tiny_model, tmp_path / "run")
    out, check, _ = export(str(run), str(tmp_path / "out"), fmt="gguf", quant=quant)
    assert check is None  # no data folder: nothing to ask
    files = list(out.glob("*.gguf"))
    assert len(files) == 1 and (out / "README.md").is_file()
    back, _ = mlx_lm.load(str(import_gguf(files[0], tmp_path / "back")))
    model, tokenizer, _ = fused_float(tiny_model, run / "adapters")
    want = logits(model, tokenizer)
    if quant == "f16":
        np.testing.assert_allclose(logits(back, tokenizer), want, atol=2e-2, rtol=1e-2)
    else:
        rounded = []
        for name, w in tree_flatten(model.parameters()):
            kind = tensor_type(translate_weight_names(name), w.ndim, quant)
            if w.ndim == 2:
                a = np.array(w.astype(mx.float32))
                w = mx.array(dequantize(quantize(a, kind), kind).reshape(a.shape))
            rounded.append((name, w))
        model.update(tree_unflatten(rounded))
        meant = logits(model, tokenizer)
        read_back = np.abs(logits(back, tokenizer) - meant).max()  # MLX's quantized kernels, half-precision scales
        rounding = np.abs(want - meant).max()
        assert read_back < 1e-2 and read_back < rounding / 10, (read_back, rounding)


def test_gguf_metadata_holds_the_tokenizer_template_and_stop_token(tiny_model, tmp_path):
    from gguf import GGUFReader, TokenType
    from mlx_lm.utils import load_tokenizer

    run = make_run(tiny_model, tmp_path / "run")
    out, _, _ = export(str(run), str(tmp_path / "out"), fmt="gguf")
    fields = GGUFReader(next(out.glob("*.gguf"))).fields
    tokenizer = load_tokenizer(Path(tiny_model))
    value = {k: f.contents() for k, f in fields.items() if k != "tokenizer.ggml.merges"}
    assert value["general.architecture"] == "llama"
    assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "gpt-2"
    assert value["tokenizer.chat_template"] == tokenizer.chat_template
    assert value["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    tokens, types = value["tokenizer.ggml.tokens"], value["tokenizer.ggml.token_type"]
    assert tokens[:len(tokenizer.get_vocab())] == [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda x: x[1])]
    assert types[tokenizer.eos_token_id] == TokenType.CONTROL  # parsed as one token in a prompt
    assert len(fields["tokenizer.ggml.merges"].data) > 0


def test_unsupported_architectures_are_one_sentence(tiny_model, tmp_path):
    import shutil

    base = tmp_path / "qwen"
    shutil.copytree(tiny_model, base)
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    run = make_run(tiny_model, tmp_path / "run")
    with pytest.raises(ExportError, match="covers llama-family models .* convert_hf_to_gguf"):
        export(str(run), str(tmp_path / "out"), fmt="gguf", model=str(base))
    assert not (tmp_path / "out").exists()


def adapter_answers_as_data(base: Path, run: Path, data: Path) -> None:
    """The training questions with, as their answers, what base + adapter answers greedily: so the
    self-check's "right" is "answers as the adapter does"."""
    from engine import recall as probes
    from engine.chat import ChatSession
    from engine.evaluate import answer_greedily

    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    session = ChatSession.load(str(base), str(run / "adapters"))
    answers = answer_greedily(session.model, session.tokenizer, probes.tokenize(rows, session.tokenizer), 8)
    for row, a in zip(rows, answers):
        row["messages"][-1]["content"] = a.text
    (data / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def test_the_self_check_keeps_a_faithful_export_and_refuses_one_that_lost_the_answers(tiny_model, tmp_path,
                                                                                      monkeypatch):
    data = write_chat_data(tmp_path / "data", n_train=8, n_valid=2, seed=4)
    run = make_run(tiny_model, tmp_path / "run", data)
    adapter_answers_as_data(tiny_model, run, data)

    out, check, _ = export(str(run), str(tmp_path / "f16"), fmt="gguf", quant="f16", check=8)
    # the probe's answers run longer than the adapter's, so only some score as right: those are what it "knows"
    assert check["questions"] == 8 and check["same_answer"] == 8 and check["adapter_right"] >= 3
    assert check["export_right"] == check["adapter_right"] and not check["lost"]
    assert json.loads((out / "export_check.json").read_text()) == check

    # an export whose answers lost facts base + adapter got right (mlx-lm #1172: a small adapter fused into a
    # 4-bit base) is refused, leaves nothing behind, and is kept with --force
    import engine.export as ex

    real = ex.self_check

    def losing(*args):
        got = real(*args)
        return {**got, "export_right": 0, "lost": got["adapter_right"] > ex.CHECK_MARGIN * got["questions"]}

    monkeypatch.setattr(ex, "self_check", losing)
    with pytest.raises(ExportError, match=r"lost what the adapter knew.*--quant f16 or q8_0.*--force"):
        export(str(run), str(tmp_path / "lost"), fmt="gguf", quant="q4_0", check=8)
    assert not (tmp_path / "lost").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lost")]  # nothing half-written left
    out, check, _ = export(str(run), str(tmp_path / "lost"), fmt="gguf", quant="q4_0", check=8, force=True)
    assert check["lost"] and json.loads((out / "export_check.json").read_text())["lost"]


def test_a_fused_mlx_export_checks_itself_too(tiny_model, tmp_path):
    data = write_chat_data(tmp_path / "data", n_train=6, n_valid=2, seed=4)
    run = make_run(tiny_model, tmp_path / "run", data)
    out, check, _ = export(str(run), str(tmp_path / "fused"), fmt="fused", check=6)
    assert check["questions"] == 6 and check["same_answer"] == 6 and not check["lost"]


def test_the_lmstudio_layout_is_publisher_and_model_and_loads(tiny_model, tmp_path):
    import mlx_lm

    run = make_run(tiny_model, tmp_path / "myrun")
    out, _, _ = export(str(run), str(tmp_path / "lms"), fmt="lmstudio")
    folders = [p for p in (out / "farense-tui").iterdir()]
    assert [p.name for p in folders] == [f"{Path(tiny_model).name}-myrun-mlx"] and (out / "README.md").is_file()
    model, tokenizer = mlx_lm.load(str(folders[0]))
    ref, _, _ = fused_float(tiny_model, run / "adapters")
    np.testing.assert_allclose(logits(model, tokenizer), logits(ref, tokenizer), atol=1e-4)


def conversations():
    return [
        ([{"role": "user", "content": "Quando foi fundado o Farense?"}], None),
        ([{"role": "user", "content": "Quem?"}, {"role": "assistant", "content": "O Farense."},
          {"role": "user", "content": "E o estádio?"}], "Responde em português."),
    ]


def test_the_ollama_modelfile_reproduces_the_default_models_chat_template(tmp_path):
    """SmolLM2's template (ChatML with its own default system prompt): the Go template's turns, rendered the
    way Ollama fills them, give exactly the prompt our chat sends; the Modelfile names stops and sampler."""
    from mlx_lm.utils import load_tokenizer

    from engine.ollama import modelfile, read_turns
    from farense_core.models import default_model_path

    tokenizer = load_tokenizer(Path(str(default_model_path())))
    turns = read_turns(tokenizer)
    assert turns.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    for messages, system in conversations():
        want = tokenizer.apply_chat_template(([{"role": "system", "content": system}] if system else []) + messages,
                                             tokenize=False, add_generation_prompt=True)
        assert turns.render(messages, system or turns.default_system) == want
    text = modelfile("m.gguf", tokenizer, ["<|im_end|>"])
    assert text.startswith("FROM ./m.gguf\n") and 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in text and "PARAMETER repeat_penalty 1.1" in text
    assert "{{-" not in text  # would trim the newline each turn ends with
    assert '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in text


def test_the_ollama_export_writes_gguf_modelfile_and_readme(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run")
    out, _, _ = export(str(run), str(tmp_path / "ollama"), fmt="ollama", quant="q8_0")
    gguf_file = next(out.glob("*.gguf"))
    assert gguf_file.name.endswith("-q8_0.gguf")
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{gguf_file.name}\n") and "TEMPLATE" in modelfile
    assert "ollama create" in (out / "README.md").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_streams_the_adapters_answer_to_the_official_openai_client(tiny_model, tmp_path):
    from openai import OpenAI

    from engine.chat import ChatSession, ReplySettings

    run = make_run(tiny_model, tmp_path / "run")
    (run / "events.jsonl").write_text("")  # a run folder, as training leaves it
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "farense_tui.cli", "serve", "--run", str(run), "--port", str(port)],
                            env=engine_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.time() + 60
        while True:
            try:
                models = [m.id for m in client.models.list().data]
                break
            except Exception:  # noqa: BLE001 - not listening yet
                assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else ""
                time.sleep(0.5)
        assert str(Path(tiny_model).resolve()) in models
        from farense_tui.runs import served_url

        assert served_url(run) == f"http://127.0.0.1:{port}/v1"
        # "default_model" is the model (and adapter) the server was started with; another name makes mlx-lm's
        # server load that model without the adapter
        stream = client.chat.completions.create(model="default_model", messages=PROMPT, stream=True, temperature=0,
                                                max_tokens=12)
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(pieces) > 1  # streamed, not one block
    ours = ChatSession.load(str(tiny_model), str(run / "adapters")).reply(
        PROMPT[0]["content"], ReplySettings(temperature=0.0, repetition_penalty=1.0, max_tokens=12, keep_history=False))
    base = ChatSession.load(str(tiny_model), None).reply(
        PROMPT[0]["content"], ReplySettings(temperature=0.0, repetition_penalty=1.0, max_tokens=12, keep_history=False))
    assert "".join(pieces) == ours.text != base.text  # the adapter's answer, not the base's
    assert not (run / "serve.json").exists()  # removed when the server stopped


def test_serve_without_a_folder_is_one_sentence(tmp_path):
    p = subprocess.run([sys.executable, "-m", "engine.serve", "--run", str(tmp_path / "nowhere")], env=engine_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "does not exist" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.skipif(sys.platform == "darwin", reason="llama.cpp's wheel is built in CI on Linux")
def test_a_real_llama_cpp_answers_like_our_chat(tmp_path):
    """The default model with an adapter, exported as f16 GGUF, in llama.cpp (llama-cpp-python, built from its
    source, `make test-llama`): the prompt its chat formatting builds from the file's template and tokenizer is
    our chat's, token for token; and along our chat's greedy answers, llama.cpp picks the same next token at
    every step where our choice is not a near-tie (half precision against float32 may flip those)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from engine.chat import ChatSession, ReplySettings
    from farense_core.models import default_model_path

    base = Path(str(default_model_path()))
    run = make_run(base, tmp_path / "run", seed=3)
    out, _, _ = export(str(run), str(tmp_path / "gguf"), fmt="gguf")
    llm = llama_cpp.Llama(model_path=str(next(out.glob("*.gguf"))), n_ctx=512, verbose=False, logits_all=True)
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                                    bos_token="<|im_start|>")
    session = ChatSession.load(str(base), str(run / "adapters"))
    compared = 0
    for q in ["Quando foi fundado o Sporting Clube Farense?", "Who won the 1990 Taça de Portugal final?",
              "Em que estádio joga o Farense?"]:
        prompt = session.encode(session.messages_for(q, ReplySettings()))
        theirs = formatter(messages=[{"role": "user", "content": q}]).prompt
        assert llm.tokenize(theirs.encode(), add_bos=False, special=True) == prompt
        tokens, margins = list(prompt), []
        for _ in range(24):  # our greedy answer, with how clear each choice was
            logits = np.array(session.model(mx.array(tokens)[None])[0, -1].astype(mx.float32))
            top2 = np.sort(logits)[-2:]
            tokens.append(int(logits.argmax()))
            margins.append(top2[1] - top2[0])
        llm.reset()
        llm.eval(tokens)
        scores = np.array(llm.scores[:len(tokens)])
        for i, margin in enumerate(margins):
            if margin > 0.05:
                assert int(scores[len(prompt) - 1 + i].argmax()) == tokens[len(prompt) + i], (q, i)
                compared += 1
    assert compared >= 60  # most of the 72 steps are clear choices
