"""farense-tui data check / split / stats: exact problem lines, exit codes, no tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import datatools as D

ROOT = Path(__file__).resolve().parent.parent

CHAT = {"messages": [{"role": "user", "content": "Olá?"}, {"role": "assistant", "content": "Olá."}]}


def jl(*objs) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


def run_check(capsys, *paths):
    code = D.main(["check", *map(str, paths)])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("content, line, message", [
    (jl(CHAT) + '{"messages": [}\n', 2, "is not valid JSON: Expecting value (column 15)"),
    (jl({"foo": 1}), 1, "unknown format (keys 'foo'); use 'messages', 'prompt' + 'completion', or 'text'"),
    (jl([1, 2]), 1, "is a list, not a JSON object"),
    (jl({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}), 1,
     "message 1 has role 'bot'; use one of system, user, assistant, tool"),
    (jl(CHAT, {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}), 2,
     "message 1 (user) has content that is a number; it must be a string"),
    (jl({"messages": []}), 1, "'messages' is empty"),
    (jl({"messages": [{"role": "user", "content": "q"}]}), 1,
     "the last message is from 'user', not the assistant: the conversation looks cut short"),
    (jl(CHAT, {"text": "abc"}), 2,
     "is in text format but line 1 is chat; mlx-lm reads the whole file in the first line's format, "
     "so use one format per file"),
    (jl({"prompt": "p", "completion": ""}), 1, "'completion' is empty: nothing to learn"),
    (jl({"text": 3}), 1, "'text' is a number; it must be a string"),
    (jl(CHAT) + "\n" + jl(CHAT), 2, "is blank; mlx-lm's loader fails on blank lines, so delete it"),
    (jl(CHAT) + '{"text": "cut sho', 2,
     "is cut short (Unterminated string starting at, column 10, and no final newline): the file looks truncated"),
])
def test_check_reports_each_problem(tmp_path, capsys, content, line, message):
    f = tmp_path / "data.jsonl"
    f.write_text(content, encoding="utf-8")
    code, out = run_check(capsys, f)
    assert code == 1
    assert f"{f}:{line}: {message}\n" in out
    assert out.splitlines()[-1].startswith(f"{f}: ") and "1 problem" in out.splitlines()[-1]


def test_check_accepts_bom_crlf_and_empty_prompt(tmp_path, capsys):
    f = tmp_path / "win.jsonl"
    lines = [json.dumps({"prompt": "", "completion": "Faro."}), json.dumps({"prompt": "Onde?", "completion": "Faro."})]
    f.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    code, out = run_check(capsys, f)
    assert code == 0
    assert out == f"{f}: 2 examples (completions 2), no problems\n"
    r = D.check_file(f)
    assert r.format == "completions" and r.samples[0] == {"prompt": "", "completion": "Faro."}


def test_check_counts_formats_over_files(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(jl(CHAT, CHAT, CHAT))
    b.write_text(jl({"text": "x"}, {"text": "y"}))
    code, out = run_check(capsys, a, b)
    assert code == 0
    assert out.splitlines() == [f"{a}: 3 examples (chat 3), no problems", f"{b}: 2 examples (text 2), no problems",
                                "2 files: 5 examples (chat 3, text 2), no problems"]


def test_check_file_problems(tmp_path, capsys):
    missing, folder, garbage, latin = (tmp_path / n for n in ("missing.jsonl", "dir", "garbage.bin", "latin.jsonl"))
    folder.mkdir()
    garbage.write_bytes(bytes(range(256)) * 4)
    latin.write_bytes(b'{"text": "S\xe3o Lu\xeds"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out = run_check(capsys, missing, folder, garbage, latin, empty)
    assert code == 1
    assert f"{missing}: no such file; check the path\n" in out
    assert f"{folder}: is a folder with no .jsonl files in it; name the data files, e.g. {folder / 'train.jsonl'}\n" in out
    assert f"{garbage}: is a binary file, not JSON lines text\n" in out
    assert f"{latin}:1: is not valid UTF-8 (byte 0xe3 at column 12)\n" in out
    assert f"{empty}: is empty: there are no examples in it\n" in out
    assert out.splitlines()[-1] == "5 files: 0 examples, 5 problems"


def test_check_as_a_subprocess_never_tracebacks(tmp_path):
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 100)
    good = tmp_path / "good.jsonl"
    good.write_text(jl(CHAT))
    p = subprocess.run([sys.executable, "-m", "engine.datatools", "check", str(tmp_path / "nope.jsonl"), str(tmp_path),
                        str(garbage), str(good)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr + p.stdout
    assert f"{tmp_path / 'nope.jsonl'}: no such file; check the path" in p.stdout
    assert f"{good}: 1 example (chat 1), no problems" in p.stdout
    clean = subprocess.run([sys.executable, "-m", "engine.datatools", "check", str(good)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0 and clean.stderr == ""


def test_datatools_imports_no_mlx():
    code = "import sys, engine.datatools; print(any(m == 'mlx' or m.startswith(('mlx.', 'mlx_lm')) for m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "False", p.stderr


# ---------------------------------------------------------------------------------------------- split


@pytest.fixture
def twenty(tmp_path):
    f = tmp_path / "all.jsonl"
    f.write_text(jl(*({"text": f"exemplo {i}"} for i in range(20))), encoding="utf-8")
    return f


def read_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_split_counts_and_seed(tmp_path, twenty, capsys):
    assert D.main(["split", str(twenty), "--valid-fraction", "0.25", "--seed", "3", "--out", str(tmp_path / "a")]) == 0
    train, valid = read_lines(tmp_path / "a" / "train.jsonl"), read_lines(tmp_path / "a" / "valid.jsonl")
    assert (len(train), len(valid)) == (15, 5)
    assert sorted(train + valid) == sorted(read_lines(twenty))
    assert D.main(["split", str(twenty), "--valid-fraction", "0.25", "--seed", "3", "--out", str(tmp_path / "b")]) == 0
    for name in ("train.jsonl", "valid.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert D.main(["split", str(twenty), "--valid-fraction", "0.25", "--seed", "4", "--out", str(tmp_path / "c")]) == 0
    assert read_lines(tmp_path / "c" / "valid.jsonl") != valid
    assert f"{tmp_path / 'a' / 'train.jsonl'}: 15 examples" in capsys.readouterr().out


def test_split_refuses_to_overwrite_without_force(tmp_path, twenty, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "valid.jsonl").write_text("keep me\n")
    assert D.main(["split", str(twenty), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (f"farense-tui data split: {out / 'valid.jsonl'} already exists; pass --force to overwrite it, "
                   "or choose another --out.\n")
    assert (out / "valid.jsonl").read_text() == "keep me\n" and not (out / "train.jsonl").exists()
    assert D.main(["split", str(twenty), "--out", str(out), "--force"]) == 0
    assert len(read_lines(out / "valid.jsonl")) == 2 and len(read_lines(out / "train.jsonl")) == 18


@pytest.mark.parametrize("args, message", [
    (["--valid-fraction", "1.5"], "--valid-fraction is 1.5; use a number between 0 and 1, e.g. 0.1."),
    (["--valid-fraction", "0"], "--valid-fraction is 0.0; use a number between 0 and 1, e.g. 0.1."),
    (["--valid-fraction", "0.01"], "With 20 examples, a fraction of 0.01 leaves the validation part empty; "
                                   "use more examples or another --valid-fraction."),
    (["--valid-fraction", "0.99"], "With 20 examples, a fraction of 0.99 leaves the training part empty; "
                                   "use more examples or another --valid-fraction."),
])
def test_split_validates_fraction(tmp_path, twenty, capsys, args, message):
    assert D.main(["split", str(twenty), "--out", str(tmp_path / "o"), *args]) == 1
    assert capsys.readouterr().err == f"farense-tui data split: {message}\n"
    assert not (tmp_path / "o").exists()


def test_split_refuses_a_file_with_problems(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(jl(CHAT) + "oops\n")
    assert D.main(["split", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == (f"farense-tui data split: {bad} has 1 problem; run 'farense-tui data check "
                                       f"{bad}' to see them.\n")


# ---------------------------------------------------------------------------------------------- stats


def test_length_stats_figures():
    st = D.length_stats(list(range(1, 101)), max_seq_length=90)
    assert (st.count, st.min, st.max, st.median, st.p95, st.truncated) == (100, 1, 100, 50.5, 95, 10)
    assert st.mean == pytest.approx(50.5)
    assert sum(c for _, _, c in st.histogram) == 100
    text = D.format_stats(st)
    assert "truncated at max_seq_length 90: 10 of 100 (10.0%)" in text


def test_stats_truncation_matches_a_direct_count(tiny_model, tmp_path, capsys):
    from transformers import AutoTokenizer
    from tiny_model import write_chat_data

    data = write_chat_data(tmp_path / "d", n_train=30, n_valid=2)
    samples = D.check_file(data / "train.jsonl").samples
    direct_tok = AutoTokenizer.from_pretrained(str(tiny_model))
    rendered = [direct_tok.apply_chat_template(s["messages"], tokenize=False) for s in samples]
    direct = [len(direct_tok.encode(r, add_special_tokens=False)) for r in rendered]
    assert D.token_lengths(samples, D.load_tokenizer(str(tiny_model))) == direct
    n = sorted(direct)[len(direct) // 2]
    expected = sum(1 for x in direct if x > n)
    assert 0 < expected < len(direct)
    assert D.main(["stats", str(data / "train.jsonl"), "--model", str(tiny_model), "--max-seq-length", str(n)]) == 0
    out = capsys.readouterr().out
    assert f"truncated at max_seq_length {n}: {expected} of 30 " in out
    assert f"max {max(direct)}" in out and "█" in out

    text = tmp_path / "text.jsonl"
    text.write_text(jl({"text": "O Farense jogou em casa."}))
    assert D.token_lengths(D.check_file(text).samples, direct_tok) == [len(direct_tok.encode("O Farense jogou em casa.")) + 1]


def test_stats_missing_model_is_one_sentence(tmp_path, capsys):
    f = tmp_path / "a.jsonl"
    f.write_text(jl(CHAT))
    assert D.main(["stats", str(f), "--model", str(tmp_path / "no-model")]) == 1
    err = capsys.readouterr().err
    assert err == (f"farense-tui data stats: The model folder {tmp_path / 'no-model'} does not exist; pass a model "
                   "folder or a Hugging Face id (or run 'farense-tui model default' to install the default model).\n")


def test_check_takes_a_folder_as_its_jsonl_files(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text(jl(CHAT, CHAT))
    (tmp_path / "valid.jsonl").write_text(jl({"messages": []}))
    (tmp_path / "notes.txt").write_text("not data")
    code, out = run_check(capsys, tmp_path)
    assert code == 1
    assert f"{tmp_path / 'valid.jsonl'}:1: 'messages' is empty" in out
    assert f"{tmp_path / 'train.jsonl'}: 2 examples (chat 2), no problems" in out
    assert "notes.txt" not in out and "2 files: " in out


def test_preview_shows_examples_as_training_sees_them(tiny_model, tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text(jl(CHAT, {"messages": [{"role": "user", "content": "Quem?"},
                                           {"role": "assistant", "content": "O Farense " * 40}]}))
    assert D.main(["preview", str(path), "--model", str(tiny_model), "--n", "2", "--max-seq-length", "64"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("── example 2 of 2: ")
    assert first.startswith("── example 1 of 2: ") and "trained on (with mask_prompt: the answer) ──" in first
    assert "<|im_start|>user\nOlá?<|im_end|>" in first and "▶Olá.<|im_end|>\n◀" in first  # only the answer trained
    assert ", cut to 64 by max_seq_length;" in second  # the long answer is cut
