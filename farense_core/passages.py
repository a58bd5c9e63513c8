"""Documents to passages: what ``farense-tui data from-docs`` reads and how it cuts it. Pure Python.

- **Reading** (``find_documents``, ``read_document``): Markdown (``.md``, ``.markdown``) and plain text
  (``.txt``) as UTF-8; PDF with pypdf (a dependency); Word ``.docx`` with python-docx (the optional
  extra ``docx``: it needs lxml), its heading styles read as Markdown headings.
- **Blocks**: Markdown is parsed by markdown-it-py (CommonMark, with tables), so a list, a table or a
  fenced code block is one block and setext headings are headings; plain text and PDF text are
  paragraphs separated by blank lines.
- **Passages** (``split_passages``): a heading starts a new passage and never ends one: every passage
  begins with the headings it sits under (the document's title, the section, the subsection), so a
  heading stays with its text and each passage says what it is about. The paragraphs of a section are
  packed into passages of at most ``max_chars`` characters; a longer paragraph is cut between
  sentences (or list items), and only a sentence longer than the bound is cut, between words.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

DEFAULT_MAX_CHARS = 1000
MIN_MAX_CHARS = 100
SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".pdf": "pdf", ".docx": "docx"}

# words that end with a period without ending the sentence (compared lowercase)
ABBREVIATIONS = frozenset("""
sr sra srs dr dra drs prof profa eng arq st mr mrs ms jr vs cf fig pag pág nº n av ex e.g i.e p.ex
""".split())


class DocumentError(ValueError):
    """A document that cannot be read, as one sentence saying what to do."""


@dataclass(frozen=True)
class Passage:
    source: str   # the document, relative to the folder read
    index: int    # 1, 2, ... within the document
    text: str     # the headings it sits under, then its paragraphs

    @property
    def key(self) -> str:
        """Names the passage across runs: the same document text gives the same key."""
        return hashlib.sha256(f"{self.source}\n{self.text}".encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------- reading


def find_documents(folder: str | Path, skip: Sequence[str | Path] = ()) -> list[Path]:
    """The readable documents under ``folder``, recursively, in path order; hidden files and folders
    and anything under ``skip`` (the output folder) left out."""
    root = Path(folder)
    skipped = [Path(s).resolve() for s in skip]
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in SUFFIXES:
            continue
        if not path.is_file() or any(path.resolve().is_relative_to(s) for s in skipped):
            continue
        found.append(path)
    return found


def read_document(path: str | Path) -> tuple[str, str]:
    """(kind of blocks: "markdown" or "text", the document's text)."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DocumentError(f"{path} is not a document from-docs reads; use .md, .txt, .pdf or .docx files.")
    if kind in ("markdown", "text"):
        try:
            return kind, path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise DocumentError(f"{path} is not UTF-8 text; save it as UTF-8 and run again.") from None
    if kind == "pdf":
        return "text", _pdf_text(path)
    return "markdown", _docx_text(path)


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise DocumentError(f"{path} is an encrypted PDF; save an unlocked copy (or its text as .txt) and "
                                "run again.")
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except (PdfReadError, ValueError, KeyError) as e:
        raise DocumentError(f"{path} could not be read as a PDF ({e}); save its text as .txt and run again.") from None


def _docx_text(path: Path) -> str:
    try:
        import docx
    except ImportError:
        raise DocumentError(f"{path} is a Word file and python-docx is not installed; install it with "
                            "\"pip install 'farense-tui[docx]'\" (or save the file as .txt) and run again.") from None
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, ValueError, KeyError) as e:
        raise DocumentError(f"{path} could not be read as a Word file ({e}); save its text as .txt and "
                            "run again.") from None
    lines = []
    for p in document.paragraphs:
        text = p.text.strip()
        style = (p.style.name if p.style is not None else "") or ""
        level = re.fullmatch(r"Heading (\d)", style)
        if not text:
            continue
        if style == "Title":
            lines.append(f"# {text}")
        elif level:
            lines.append(f"{'#' * min(int(level[1]) + 1, 6)} {text}")  # under the Title's level 1
        else:
            lines.append(text)
    return "\n\n".join(lines)


# -------------------------------------------------------------------------------------- blocks

Block = tuple[int, str]  # (heading level 1-6, or 0 for a paragraph; its text)


def markdown_blocks(text: str) -> list[Block]:
    """Headings and top-level blocks (paragraphs, lists, tables, code, quotes) as written."""
    from markdown_it import MarkdownIt

    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    blocks: list[Block] = []
    for i, tok in enumerate(tokens):
        if tok.level != 0 or tok.nesting < 0 or tok.map is None or tok.type == "hr":
            continue
        if tok.type == "heading_open":
            blocks.append((int(tok.tag[1]), tokens[i + 1].content.strip()))
            continue
        body = "\n".join(line.rstrip() for line in lines[tok.map[0]:tok.map[1]]).strip()
        if body:
            blocks.append((0, body))
    return blocks


def text_blocks(text: str) -> list[Block]:
    """Paragraphs separated by blank lines."""
    return [(0, p.strip()) for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if p.strip()]


# ------------------------------------------------------------------------------------ sentences

_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+")
_LINE_START = re.compile(r"\n[ \t]*\n|\n(?=[ \t]*(?:[-*+]|\d+[.)])[ \t])")


def sentence_starts(text: str) -> list[int]:
    """Where sentences (and list items) after the first begin: after . ! ? or … and spaces, before a
    capital, a digit or an opening quote, unless the period ends an abbreviation or an initial."""
    starts = set()
    for m in _SENTENCE_END.finditer(text):
        following = text[m.end():m.end() + 1]
        if not following or not (following.isupper() or following.isdigit() or following in "\"'“‘«(["):
            continue
        if m.group().startswith(".") and not m.group().startswith(".."):
            word = re.search(r"([\w.]+)$", text[:m.start()])
            if word and (word[1].lower() in ABBREVIATIONS or (len(word[1]) == 1 and word[1].isupper())):
                continue
        starts.add(m.end())
    starts.update(m.end() for m in _LINE_START.finditer(text))
    return sorted(s for s in starts if 0 < s < len(text))


def _cut_words(text: str, limit: int) -> list[str]:
    """A sentence longer than ``limit`` in pieces of at most ``limit``, cut between words (a word
    longer than the limit is cut where it must be)."""
    pieces, current = [], ""
    for word in text.split():
        while len(word) > limit:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:limit])
            word = word[limit:]
        if current and len(current) + 1 + len(word) > limit:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


def split_long(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut between sentences; only a sentence
    longer than ``limit`` is cut inside, between words."""
    text = text.strip()
    if len(text) <= limit:
        return [text]
    bounds = [0, *sentence_starts(text), len(text)]
    spans = [(a, b) for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]
    pieces: list[str] = []
    start = end = None
    for a, b in spans:
        if start is not None and len(text[start:b].strip()) <= limit:
            end = b
            continue
        if start is not None:
            pieces.append(text[start:end].strip())
            start = None
        if len(text[a:b].strip()) > limit:
            pieces += _cut_words(text[a:b], limit)
        else:
            start, end = a, b
    if start is not None:
        pieces.append(text[start:end].strip())
    return pieces


# ------------------------------------------------------------------------------------ passages


def split_passages(blocks: Iterable[Block], source: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[Passage]:
    """Passages of at most ``max_chars`` characters, each starting with the headings it sits under."""
    if max_chars < MIN_MAX_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_MAX_CHARS}")
    passages: list[Passage] = []
    headings: list[tuple[int, str]] = []  # the path of headings down to the current section
    chunk: list[str] = []

    def prefix() -> str:
        path = "\n".join(f"{'#' * level} {title}" for level, title in headings)
        if len(path) > max_chars // 2:  # a very long path: keep the nearest heading, cut to half the bound
            level, title = headings[-1]
            path = f"{'#' * level} {title}"[:max_chars // 2]
        return path

    def flush() -> None:
        if chunk:
            head = prefix()
            passages.append(Passage(source, len(passages) + 1, "\n\n".join(([head] if head else []) + chunk)))
            chunk.clear()

    for level, text in blocks:
        if level:
            flush()
            headings[:] = [h for h in headings if h[0] < level] + [(level, " ".join(text.split()))]
            continue
        head = prefix()
        budget = max_chars - (len(head) + 2 if head else 0)
        for piece in split_long(text, budget):
            if chunk and len("\n\n".join(chunk + [piece])) > budget:
                flush()
            chunk.append(piece)
    flush()
    return passages


def document_passages(path: str | Path, folder: str | Path, max_chars: int = DEFAULT_MAX_CHARS) -> list[Passage]:
    """One document's passages, named by its path relative to ``folder``."""
    kind, text = read_document(path)
    blocks = markdown_blocks(text) if kind == "markdown" else text_blocks(text)
    return split_passages(blocks, Path(path).relative_to(folder).as_posix(), max_chars)
