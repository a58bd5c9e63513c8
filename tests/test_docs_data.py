"""farense-tui data from-docs: passages from a folder of documents, the grounding filter, and the whole
command with a scripted model (every branch, fast) and with the tiny model (real generation: resume,
--force)."""

import json
import sys
from pathlib import Path

import pytest

from engine import datatools as D
from engine import docs_data
from farense_core import docqa
from farense_core.docqa import Source, detect_language, ground, ground_phrasing, parse_lines, parse_pairs
from farense_core.passages import (document_passages, find_documents, markdown_blocks, read_document,
                                   sentence_starts, split_long, split_passages, DocumentError)

ROOT = Path(__file__).resolve().parent.parent

PT = """# Sporting Clube Farense

O Sporting Clube Farense é um clube de futebol de Faro, no Algarve. Foi fundado em 1910 e joga no Estádio de \
São Luís.

## Época 1994-95

Na Liga Portuguesa de 1994/95 o Farense fez 34 jogos. Venceu 16 jogos. Empatou 5 jogos. Perdeu 13 jogos. \
O Dr. Silva foi o médico do clube nessa época. O treinador levou a equipa ao quinto lugar. \
A equipa qualificou-se para a Taça UEFA pela primeira vez na sua história. Os adeptos encheram o estádio.

- primeiro jogo: derrota com o Sporting por 0-2
- terceira jornada: vitória sobre o SC Salgueiros por 1-0

```
tabela
   com linha em branco

dentro do bloco
```
"""

EN = """The 2020-21 season

In the 2020/21 Primeira Liga, SC Farense played 34 games: 7 wins, 10 draws and 17 defeats.

On the first matchday, Farense lost 2-0 away at Moreirense FC.
"""

PASSAGE_EN = ("In the 2020/21 Primeira Liga, SC Farense played 34 games: 7 wins, 10 draws and 17 defeats. "
              "Farense lost 2-0 away at Moreirense FC on 18 September 2020.")


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    (folder / "epocas" / ".hidden").mkdir(parents=True)
    (folder / "clube.md").write_text(PT, encoding="utf-8")
    (folder / "epocas" / "2020-21.txt").write_text(EN, encoding="utf-8")
    (folder / "epocas" / "notes.json").write_text("{}")
    (folder / "epocas" / ".hidden" / "draft.md").write_text("# not read\n\nhidden.")
    return folder


# ------------------------------------------------------------------------------------- passages


def test_find_documents_reads_recursively_skipping_hidden_other_and_output_folders(docs):
    (docs / "out" / "text").mkdir(parents=True)
    (docs / "out" / "text" / "old.txt").write_text("written by an earlier run")
    found = [p.relative_to(docs).as_posix() for p in find_documents(docs, skip=[docs / "out"])]
    assert found == ["clube.md", "epocas/2020-21.txt"]


def test_markdown_passages_keep_headings_with_their_text_and_stay_under_the_bound(docs):
    passages = document_passages(docs / "clube.md", docs, max_chars=300)
    assert [p.index for p in passages] == list(range(1, len(passages) + 1))
    assert all(p.source == "clube.md" and len(p.text) <= 300 for p in passages)
    # every passage opens with the headings it sits under, and none is a heading alone
    assert passages[0].text.startswith("# Sporting Clube Farense\n\nO Sporting Clube Farense é")
    season = [p for p in passages if "1994/95" in p.text or "Salgueiros" in p.text or "Taça UEFA" in p.text]
    assert len(season) >= 2
    for p in passages[1:]:
        assert p.text.startswith("# Sporting Clube Farense\n## Época 1994-95\n\n")
        assert p.text.split("\n\n", 1)[1].strip()
    # the long paragraph was cut between sentences: every piece ends a sentence, and they rebuild it
    bodies = [b for p in passages[1:] for b in p.text.split("\n\n")[1:]]
    paragraph = PT.split("\n\n")[3]
    prose = [b for b in bodies if b in paragraph]
    assert len(prose) >= 2 and all(b.endswith(".") for b in prose)
    assert " ".join(prose) == paragraph
    assert "O Dr. Silva foi o médico" in " ".join(prose)  # an abbreviation does not end a sentence
    # a list and a fenced block (with a blank line inside) each stay whole
    assert any(b.startswith("- primeiro jogo") and b.endswith("1-0") for b in bodies)
    assert any(p.text.endswith("\n\n```\ntabela\n   com linha em branco\n\ndentro do bloco\n```") for p in passages)


def test_plain_text_is_paragraphs_without_headings(docs):
    passages = document_passages(docs / "epocas" / "2020-21.txt", docs, max_chars=1000)
    assert [p.text for p in passages] == [EN.strip()]
    small = document_passages(docs / "epocas" / "2020-21.txt", docs, max_chars=150)
    assert [p.text for p in small] == [EN.split("\n\n")[0] + "\n\n" + EN.split("\n\n")[1], EN.split("\n\n")[2].strip()]
    assert all(p.source == "epocas/2020-21.txt" for p in small)


def test_setext_headings_and_a_title_path_that_changes():
    blocks = markdown_blocks("Title\n=====\n\nIntro text.\n\nPart A\n------\n\nA text.\n\n# Other\n\nOther text.\n")
    assert blocks == [(1, "Title"), (0, "Intro text."), (2, "Part A"), (0, "A text."), (1, "Other"), (0, "Other text.")]
    texts = [p.text for p in split_passages(blocks, "x.md", 1000)]
    assert texts == ["# Title\n\nIntro text.", "# Title\n## Part A\n\nA text.", "# Other\n\nOther text."]


def test_sentences_and_long_sentences():
    assert sentence_starts("Em 1910. O clube nasceu. Depois, em 1911.") == [9, 25]
    assert sentence_starts("O Sr. Silva e J. Costa chegaram. Fim.") == [33]
    assert sentence_starts("Disse «olá.» Depois saiu! E voltou?") == [13, 26]
    text = "Curta. Uma " + "palavra " * 60 + "fim. Outra curta."
    pieces = split_long(text, 100)
    assert pieces[0] == "Curta." and pieces[-1] == "Outra curta." and len(pieces) == 7
    assert all(len(p) <= 100 for p in pieces)
    assert " ".join(pieces).split() == text.split()
    assert split_long("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_word_and_pdf_documents(tmp_path):
    import docx

    d = docx.Document()
    d.add_heading("Farense", level=0)
    d.add_heading("História", level=1)
    d.add_paragraph("O clube foi fundado em 1910.")
    d.save(tmp_path / "clube.docx")
    assert [p.text for p in document_passages(tmp_path / "clube.docx", tmp_path)] == [
        "# Farense\n## História\n\nO clube foi fundado em 1910."]

    (tmp_path / "f.pdf").write_bytes(minimal_pdf("Farense was founded in 1910."))
    assert read_document(tmp_path / "f.pdf") == ("text", "Farense was founded in 1910.")
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(DocumentError, match=r"bad.pdf could not be read as a PDF .*; save its text as .txt"):
        read_document(tmp_path / "bad.pdf")


def test_a_word_file_without_python_docx_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "a.docx").write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "docx", None)  # import docx raises ImportError
    with pytest.raises(DocumentError) as e:
        read_document(tmp_path / "a.docx")
    assert str(e.value) == (f"{tmp_path / 'a.docx'} is a Word file and python-docx is not installed; install it with "
                            "\"pip install 'farense-tui[docx]'\" (or save the file as .txt) and run again.")


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` in Helvetica, with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# ------------------------------------------------------------------------------ language, replies


def test_language_of_a_passage():
    assert detect_language(PT) == "pt"
    assert detect_language(EN) == "en"
    assert detect_language("Farense 2-0 Olhanense") == ""
    assert docqa.qa_messages("texto", 2, "pt")[-1]["content"].startswith("Texto:\ntexto\n\nEscreve 2 perguntas")
    assert docqa.qa_messages("Text", 2, "")[-1]["content"].endswith("Write them in the language of the text.")


def test_replies_are_read_in_both_languages_numbered_or_not():
    reply = ("Here are the questions:\n1. Q: Where does Farense play?\nA: At the Estádio de São Luís.\n"
             "**P:** Quando foi fundado?\n**R:** Em 1910.\nQ: How many games? A: 34 games.\nQ: No answer here?\n")
    assert parse_pairs(reply) == [("Where does Farense play?", "At the Estádio de São Luís."),
                                  ("Quando foi fundado?", "Em 1910."), ("How many games?", "34 games."),
                                  ("No answer here?", "")]
    assert parse_pairs("Farense is a club.") == []
    assert parse_lines("1. Where is it?\n- Q: Where can it be found?\n\n") == ["Where is it?", "Where can it be found?"]


# ------------------------------------------------------------------------------------- grounding

SOURCE = Source(PASSAGE_EN)


@pytest.mark.parametrize("question, answer, reason, detail", [
    ("How many games did Farense play in 2020/21?", "SC Farense played 34 games.", "", ""),
    ("How did the game at Moreirense end?", "Farense lost 2-0 away.", "", ""),
    ("When did Farense lose at Moreirense?", "On 2020-09-18.", "", ""),       # the same date, another form
    ("Did Farense lose at Moreirense?", "Yes, it lost away at Moreirense.", "", ""),  # "Did" is no name
    ("How many games did Farense win?", "Farense won 8 games.", "number not in the passage", "8"),
    ("When was the first game?", "On 19 September 2020.", "date not in the passage", "2020-09-19"),
    ("Who beat Farense?", "Benfica beat Farense 2-0.", "words not in the passage", "benfica, beat"),
    ("Where did Farense play against Benfica?", "Away at Moreirense.", "name not in the passage", "benfica"),
    ("Who coached Farense?", "The coach was famous and experienced.", "words not in the passage",
     "coach, famous, experienced"),
    ("Farense played 34 games", "34 games.", "not a question", "Farense played 34 games"),
    ("How many draws?", "", "no answer", ""),
    ("How many draws?", "How many draws?", "answer repeats the question", ""),
    ("What does the text say?", PASSAGE_EN, "answer copies the passage",
     f"{len(PASSAGE_EN)} of its {len(PASSAGE_EN)} characters"),
])
def test_grounding_keeps_pairs_that_quote_the_passage(question, answer, reason, detail):
    verdict = ground(question, answer, SOURCE)
    assert (verdict.kept, verdict.reason, verdict.detail) == (not reason, reason, detail)


def test_grounding_drops_a_question_asked_twice_and_checks_phrasings():
    seen = frozenset({"how many games did farense play?"})
    assert ground("How many games did  Farense play?", "34 games.", SOURCE, seen).reason == "duplicate question"
    assert ground_phrasing("How many matches did Farense play?", SOURCE, seen).kept
    assert ground_phrasing("How many games did farense play?", SOURCE, seen).reason == "duplicate question"
    assert ground_phrasing("How many games did Benfica play?", SOURCE, seen).detail == "benfica"
    assert ground_phrasing("Games played by Farense", SOURCE, seen).reason == "not a question"
    # a word shares its first letters with the passage's: another form of it
    assert ground("What happened at Moreirense?", "Farense was defeated away.", SOURCE).kept


# ------------------------------------------------------------------------- the command, scripted


def scripted(replies_for):
    """A generator answering each chat with ``replies_for(last user message)``; it records the chats."""
    asked = []

    def make(model, batch_size):
        def generate(chats, max_tokens):
            asked.append([chat[-1]["content"] for chat in chats])
            return [replies_for(chat[-1]["content"]) for chat in chats]
        return generate

    return make, asked


def fake_model(tmp_path) -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return str(folder)


def reply_for(prompt: str) -> str:
    if "Moreirense" in prompt and "Text:" in prompt:
        return ("Q: How did the game at Moreirense end?\nA: Farense lost 2-0 away at Moreirense FC.\n"
                "Q: How many games did Farense win?\nA: Farense won 9 games.\n"
                "Q: How did the game at Moreirense end?\nA: Farense lost 2-0.")
    if "Texto:" in prompt:
        return ("P: Quando foi fundado o Sporting Clube Farense?\nR: Foi fundado em 1910.\n"
                "P: Onde fica a Torre de Belém?\nR: A Torre de Belém fica em Lisboa.")
    if prompt.startswith(("Write 2 other ways", "Escreve 2 outras")):
        return {"How did the game at Moreirense end?": "1. What was the result at Moreirense?\n2. What was the "
                                                       "score against Porto?",
                "Quando foi fundado o Sporting Clube Farense?": "Em que ano foi fundado o Farense?\n"
                                                                "Quando foi fundado o Sporting Clube Farense?"
                }[prompt.split("\n", 1)[1]]
    return "The text is about football."


def test_from_docs_writes_grounded_pairs_their_phrasings_and_what_it_dropped(docs, tmp_path, capsys):
    make, asked = scripted(reply_for)
    out = tmp_path / "out"
    opts = docs_data.Options(folder=str(docs), out=str(out), model=fake_model(tmp_path), max_chars=300,
                             questions=3, phrasings=3, batch_size=2)
    report = docs_data.run(opts, make_generator=make, tty=False)
    printed = capsys.readouterr()
    n = report["text"]["passages"]
    assert n == len(document_passages(docs / "clube.md", docs, 300)) + 1
    # pairs asked in batches of 2 passages in their language, then the kept questions' phrasings
    prompts = [p for batch in asked for p in batch]
    assert sum(p.startswith("Texto:") for p in prompts) == n - 1 and sum(p.startswith("Text:") for p in prompts) == 1
    assert max(len(batch) for batch in asked) == 2
    qa = report["qa"]
    assert qa["pairs_asked"] == 3 * n
    assert qa["pairs_kept"] == 2  # the founding (once: only the passage that holds 1910 keeps it) and Moreirense
    assert qa["pairs_dropped"]["number not in the passage"] == 1 + (n - 2)  # 9 wins; 1910 elsewhere
    assert qa["pairs_dropped"]["name not in the passage"] == n - 1            # the example's Lisboa, copied
    assert qa["pairs_dropped"]["duplicate question"] == 1
    assert qa["phrasings_kept"] == 2 and qa["phrasings_dropped"] == {"name not in the passage": 1,
                                                                     "duplicate question": 1}
    lines = [json.loads(x) for f in ("train.jsonl", "valid.jsonl") for x in (out / "qa" / f).read_text().splitlines()]
    got = sorted((m["messages"][0]["content"], m["messages"][1]["content"]) for m in lines)
    assert got == sorted([
        ("How did the game at Moreirense end?", "Farense lost 2-0 away at Moreirense FC."),
        ("What was the result at Moreirense?", "Farense lost 2-0 away at Moreirense FC."),
        ("Quando foi fundado o Sporting Clube Farense?", "Foi fundado em 1910."),
        ("Em que ano foi fundado o Farense?", "Foi fundado em 1910.")])
    assert (qa["train"], qa["valid"]) == (3, 1)
    assert D.check_file(out / "qa" / "train.jsonl").format == "chat"
    texts = [json.loads(x)["text"] for f in ("train.jsonl", "valid.jsonl")
             for x in (out / "text" / f).read_text().splitlines()]
    assert len(texts) == n and (report["text"]["train"], report["text"]["valid"]) == (n - 1, 1)
    # the report keeps every drop with its reason; the summary says how many and why
    drops = [d for r in report["records"] for d in r["dropped"]]
    assert {"kind": "pair", "question": "How many games did Farense win?", "answer": "Farense won 9 games.",
            "reason": "number not in the passage", "detail": "9"} in drops
    assert json.loads((out / "from_docs.json").read_text())["qa"] == qa
    assert not (out / "from_docs.partial.json").exists()
    assert (f"pairs: asked {3 * n} ({n} passages), the replies held {2 * n + 1}; kept 2, dropped {2 * n - 1}: "
            in printed.out)
    assert ("other phrasings: asked 4, the replies held 4; kept 2, dropped 2: 1 duplicate question, 1 name not in "
            "the passage") in printed.out


def test_from_docs_with_too_few_kept_pairs_and_bad_usage(docs, tmp_path, capsys):
    make, _ = scripted(lambda prompt: "nothing useful")
    report = docs_data.run(docs_data.Options(folder=str(docs), out=str(tmp_path / "o"), model=fake_model(tmp_path),
                                             phrasings=1), make_generator=make, tty=False)
    assert report["qa"]["replies_without_pairs"] == report["text"]["passages"] and not (tmp_path / "o" / "qa").exists()
    assert "0 questions kept: too few to split, so qa/ was not written" in capsys.readouterr().out
    for args, message in ((["--questions", "0"], "argument --questions: 0 is too small: use 1 or more"),
                          (["--valid-fraction", "1.5"], "argument --valid-fraction: 1.5 is not between 0 and 1"),
                          (["--questions", "2"], "--questions set what the model is asked; pass --model too")):
        assert D.main(["from-docs", str(docs), "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert D.main(["from-docs", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err == (f"farense-tui data from-docs: The folder {tmp_path / 'nope'} does not exist; "
                                       "pass the folder holding your documents.\n")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------ the command, tiny model


@pytest.mark.slow
def test_from_docs_on_the_tiny_model_resumes_and_needs_force(docs, tiny_model, tmp_path, capsys):
    """The tiny model writes garbage: what counts here is that it is asked, its replies are read and
    counted, the files written, an interrupted run goes on where it stopped, and a finished folder
    is kept unless --force."""
    model = str(tiny_model)
    args = ["from-docs", str(docs), "--out", str(tmp_path / "whole"), "--model", model, "--questions", "2",
            "--max-chars", "300", "--batch-size", "2"]
    assert D.main(args) == 0
    whole = json.loads((tmp_path / "whole" / "from_docs.json").read_text())
    n = whole["text"]["passages"]
    qa = whole["qa"]
    assert n >= 4 and qa["pairs_asked"] == 2 * n
    assert qa["pairs_parsed"] + qa["replies_without_pairs"] >= n  # every reply was read, pairs or none
    assert qa["pairs_kept"] + sum(qa["pairs_dropped"].values()) == qa["pairs_parsed"]
    assert all(r["language"] for r in whole["records"])
    assert (tmp_path / "whole" / "text" / "train.jsonl").is_file()

    # interrupted after its first batch: the state holds those passages, and no report is written
    out = tmp_path / "resumed"
    opts = docs_data.Options(folder=str(docs), out=str(out), model=model, questions=2, max_chars=300, batch_size=2)

    def interrupt(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        docs_data.run(opts, tty=False, after_batch=interrupt)
    assert "stopped with 2 of" in capsys.readouterr().err
    assert len(json.loads((out / "from_docs.partial.json").read_text())["done"]) == 2
    assert not (out / "from_docs.json").exists()

    asked = []

    def counting(model_path, batch_size):
        generate = docs_data.session_generator(model_path, batch_size)

        def counted(chats, max_tokens):
            asked.extend(c[-1]["content"] for c in chats if c[-1]["content"].startswith(("Text:", "Texto:")))
            return generate(chats, max_tokens)
        return counted

    resumed = docs_data.run(opts, make_generator=counting, tty=False)
    assert f"continuing: 2 of {n} passages were done before" in capsys.readouterr().out
    assert len(asked) == n - 2
    # greedy: the same records as the run that was never stopped
    assert resumed["records"] == whole["records"] and resumed["qa"] == whole["qa"]

    # finished: kept unless --force
    before = (tmp_path / "whole" / "from_docs.json").read_text()
    assert D.main(args) == 1
    assert capsys.readouterr().err == (f"farense-tui data from-docs: {tmp_path / 'whole'} holds a finished from-docs "
                                       "run (from_docs.json); pass --force to make it again, or choose another --out.\n")
    assert (tmp_path / "whole" / "from_docs.json").read_text() == before
    assert D.main([*args, "--force"]) == 0
    again = json.loads((tmp_path / "whole" / "from_docs.json").read_text())
    assert again["created"] >= whole["created"] and again["records"] == whole["records"]


def test_an_unfinished_run_goes_on_only_with_the_same_settings(docs, tmp_path):
    make, asked = scripted(reply_for)
    opts = docs_data.Options(folder=str(docs), out=str(tmp_path / "o"), model=fake_model(tmp_path), max_chars=300,
                             batch_size=1)

    def interrupt(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        docs_data.run(opts, make_generator=make, tty=False, after_batch=interrupt)
    other = docs_data.Options(**{**vars(opts), "questions": 2})
    with pytest.raises(D.DataToolError) as e:
        docs_data.run(other, make_generator=make, tty=False)
    assert str(e.value) == (f"{tmp_path / 'o'} holds an unfinished from-docs run with other settings (questions 3); "
                            "run that command again to finish it, or pass --force to start over.")
    asked.clear()
    report = docs_data.run(docs_data.Options(**{**vars(other), "force": True}), make_generator=make, tty=False)
    assert report["qa"]["pairs_asked"] == 2 * report["text"]["passages"]
    assert sum(p.startswith(("Text:", "Texto:")) for batch in asked for p in batch) == report["text"]["passages"]


def test_the_real_command_keeps_a_finished_folder_in_one_sentence(docs, tmp_path):
    """As a user runs it (its own process, ``python -m engine.datatools``): text samples only, then
    the same command again on the finished folder."""
    import subprocess

    command = [sys.executable, "-m", "engine.datatools", "from-docs", str(docs), "--out", str(tmp_path / "o")]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == "2 documents, 3 passages of at most 1000 characters"
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == (f"farense-tui data from-docs: {tmp_path / 'o'} holds a finished from-docs run "
                            "(from_docs.json); pass --force to make it again, or choose another --out.\n")
