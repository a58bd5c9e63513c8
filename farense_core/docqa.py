"""Question-answer pairs from a passage: the language, the prompts, reading the model's replies, and
the grounding rule that keeps only pairs quoting their facts from the passage. Pure Python: the
engine's ``from-docs`` (``engine/docs_data.py``) asks the model; everything here is tested fast.

**The grounding rule** (``ground``; ``ground_phrasing`` for a paraphrased question) keeps a pair when:

1. the question is a question (it ends with "?") and the answer says something (a letter or a digit);
2. every number, date and name (``farense_core.scoring.extract_facts``: numbers as written, dates in
   any of their forms, capitalised words) of the question and of the answer occurs in the passage
   (names compared without case or accents): the model may not bring in a fact of its own. A
   capitalised word opening a sentence ("Did", "Quantos") is not taken for a name: in the answer
   the words check (3) sees it;
3. at least ``MIN_WORDS_FOUND`` of the answer's content words (words of 4 letters or more that are
   not function words) occur in the passage, a word counting as found when the passage has it, or a
   word with the same first 5 letters (fundado/fundada, qualified/qualifies);
4. the answer is not the question again, nor most of the passage (more than half of it and over
   ``MAX_ANSWER_CHARS`` characters): a pair must pick a fact out;
5. the question was not asked before in the reply (case, accents and spaces aside): a model that
   repeats itself gets one pair, not several.

What it cannot see: an answer that recombines the passage's own words into a wrong statement
("founded in the Estádio de São Luís") passes. It is a filter against invented facts, not a judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .scoring import FUNCTION_WORDS, extract_facts, normalize

DEFAULT_QUESTIONS = 3  # pairs asked per passage
DEFAULT_PHRASINGS = 3  # ways each kept question is asked: itself and two paraphrases
MIN_WORDS_FOUND = 0.75
MAX_ANSWER_CHARS = 150
STEM = 5  # letters two words share to count as the same word

# frequent words that tell Portuguese from English (compared without accents, lowercase)
LANGUAGE_WORDS = {
    "pt": frozenset("o os um uma uns umas e em no na nos nas do da dos das ao aos pelo pela que nao com por "
                    "para foi sao era mais como mas tambem seu sua seus suas ele ela eles este esta ja".split()),
    "en": frozenset("the of and to in is was for on with by at from that this it are were has had have which "
                    "his her their its an be been who not but".split()),
}
LANGUAGE_NAMES = {"pt": "Portuguese", "en": "English"}

_WORD = re.compile(r"[^\W\d_]+")


def words(text: str) -> list[str]:
    """The words of ``text``, lowercase and without accents."""
    return _WORD.findall(normalize(text))


def detect_language(text: str) -> str:
    """"pt" or "en" by their frequent words, or "" when neither is clear (under 5% of the words)."""
    found = words(text)
    if not found:
        return ""
    hits = {lang: sum(w in vocab for w in found) for lang, vocab in LANGUAGE_WORDS.items()}
    lang = max(hits, key=hits.get)
    others = max(v for k, v in hits.items() if k != lang)
    return lang if hits[lang] > others and hits[lang] >= max(2, 0.05 * len(found)) else ""


# ------------------------------------------------------------------------------------- prompts

# one worked example per language: a 135M model follows a shown format far better than a described one
_EXAMPLE = {
    "en": ("The Eiffel Tower stands in Paris. It was finished in 1889 and is 330 metres tall.",
           [("Where does the Eiffel Tower stand?", "The Eiffel Tower stands in Paris."),
            ("When was the Eiffel Tower finished?", "It was finished in 1889.")],
           ["In which city is the Eiffel Tower?", "Where is the Eiffel Tower?"]),
    "pt": ("A Torre de Belém fica em Lisboa. Foi construída entre 1514 e 1519, à beira do rio Tejo.",
           [("Onde fica a Torre de Belém?", "A Torre de Belém fica em Lisboa."),
            ("Quando foi construída a Torre de Belém?", "Foi construída entre 1514 e 1519.")],
           ["Em que cidade fica a Torre de Belém?", "Onde se encontra a Torre de Belém?"]),
}
_ASK = {
    "en": "Text:\n{text}\n\nWrite {n} questions about the text, each followed by its answer in words taken from "
          "the text. Use the format:\nQ: question\nA: answer",
    "pt": "Texto:\n{text}\n\nEscreve {n} perguntas sobre o texto, cada uma seguida da resposta com palavras do "
          "texto. Usa o formato:\nP: pergunta\nR: resposta",
}
_REPHRASE = {
    "en": "Write {n} other ways to ask this question, one per line:\n{question}",
    "pt": "Escreve {n} outras maneiras de fazer esta pergunta, uma por linha:\n{question}",
}
_MARKS = {"en": ("Q", "A"), "pt": ("P", "R")}
_SAME_LANGUAGE = " Write them in the language of the text."


def _lang(lang: str) -> str:
    return lang if lang in _EXAMPLE else "en"


def qa_messages(passage: str, n: int, lang: str) -> list[dict]:
    """The chat that asks for ``n`` question-answer pairs about ``passage``, in its language."""
    key = _lang(lang)
    text, pairs, _ = _EXAMPLE[key]
    q, a = _MARKS[key]
    example = "\n".join(f"{q}: {question}\n{a}: {answer}" for question, answer in pairs)
    ask = _ASK[key].format(text=passage, n=n) + ("" if lang == key else _SAME_LANGUAGE)
    return [{"role": "user", "content": _ASK[key].format(text=text, n=len(pairs))},
            {"role": "assistant", "content": example},
            {"role": "user", "content": ask}]


def rephrase_messages(question: str, n: int, lang: str) -> list[dict]:
    """The chat that asks for ``n`` other phrasings of ``question``."""
    key = _lang(lang)
    _, pairs, phrasings = _EXAMPLE[key]
    return [{"role": "user", "content": _REPHRASE[key].format(n=len(phrasings), question=pairs[0][0])},
            {"role": "assistant", "content": "\n".join(phrasings)},
            {"role": "user", "content": _REPHRASE[key].format(n=n, question=question)}]


# ------------------------------------------------------------------------------------- replies

_QUESTION_MARK = re.compile(r"^(?:q|p|question|pergunta)\s*\d*\s*[:.)-]\s*", re.I)
_ANSWER_MARK = re.compile(r"^(?:a|r|answer|resposta)\s*\d*\s*[:.)-]\s*", re.I)
_INLINE_ANSWER = re.compile(r"\s(?:A|R|Answer|Resposta)\s*:\s*")
_LIST_MARK = re.compile(r"^(?:\d+\s*[.)]|[-*•])\s*")


def _clean(line: str) -> str:
    return _LIST_MARK.sub("", line.replace("**", "").strip()).strip()


def parse_pairs(reply: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a reply in the ``Q:``/``A:`` (``P:``/``R:``) format, numbered
    or not; a question with no answer line gets the answer ""."""
    pairs: list[list[str]] = []
    expecting_answer = False
    for raw in reply.splitlines():
        line = _clean(raw)
        if not line:
            continue
        if _QUESTION_MARK.match(line):
            question = _QUESTION_MARK.sub("", line, count=1)
            inline = _INLINE_ANSWER.split(question, maxsplit=1)
            pairs.append([inline[0].strip(), inline[1].strip() if len(inline) > 1 else ""])
            expecting_answer = len(inline) == 1
        elif _ANSWER_MARK.match(line) and expecting_answer:
            pairs[-1][1] = _ANSWER_MARK.sub("", line, count=1).strip()
            expecting_answer = False
        # any other line (a second answer, text around the pairs) is not part of a pair
    return [(q, a) for q, a in pairs]


def parse_lines(reply: str) -> list[str]:
    """The phrasings of a reply: one per line, list numbers, bullets and ``Q:`` marks taken off."""
    return [line for line in (_QUESTION_MARK.sub("", _clean(raw), count=1) for raw in reply.splitlines()) if line]


# ------------------------------------------------------------------------------------ grounding


@dataclass(frozen=True)
class Verdict:
    kept: bool
    reason: str = ""  # why it was dropped, a category counted in the report
    detail: str = ""  # what exactly: the number, names or words


KEPT = Verdict(True)


class Source:
    """A passage prepared for grounding checks."""

    def __init__(self, passage: str):
        self.text = passage
        self.plain = normalize(passage)
        self.facts = extract_facts(passage)
        self.words = set(words(passage))
        self.stems = {w[:STEM] for w in self.words if len(w) >= STEM}

    def has_number(self, number: str) -> bool:
        return re.search(rf"(?<![\d]){re.escape(number)}(?![\d])", self.plain) is not None

    def has_name(self, name: str) -> bool:
        return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", self.plain) is not None

    def has_word(self, word: str) -> bool:
        return word in self.words or (len(word) >= STEM and word[:STEM] in self.stems)


def _foreign_facts(text: str, source: Source) -> Optional[Verdict]:
    """The first kind of fact in ``text`` that the passage does not hold, as a drop."""
    facts = extract_facts(text)
    # a capital that opens a sentence ("Did", "Quantos") need not be a name: left to the words check
    openers = {w[0] for w in (words(s) for s in re.split(r"(?<=[.!?:])\s+", text)) if w}
    checks = (("number", sorted(n for n in facts.numbers if not source.has_number(n))),
              ("date", sorted(d for d in facts.dates if d not in source.facts.dates)),
              ("name", sorted(n for n in facts.names if not source.has_name(n) and n not in openers)))
    for kind, missing in checks:
        if missing:
            return Verdict(False, f"{kind} not in the passage", ", ".join(missing))
    return None


def content_words(text: str) -> list[str]:
    stop = FUNCTION_WORDS | LANGUAGE_WORDS["pt"] | LANGUAGE_WORDS["en"]
    return [w for w in words(text) if len(w) >= 4 and w not in stop]


def _is_question(text: str) -> bool:
    return text.rstrip().endswith("?") and any(c.isalnum() for c in text)


def ground(question: str, answer: str, source: Source, seen_questions: frozenset = frozenset()) -> Verdict:
    """Whether a generated pair quotes its facts from the passage (the module's rule), and if not why.
    ``seen_questions``: the normalised questions the passage's reply asked before this one."""
    if not _is_question(question):
        return Verdict(False, "not a question", question[:80])
    if not any(c.isalnum() for c in answer):
        return Verdict(False, "no answer")
    if normalize(question) in seen_questions:
        return Verdict(False, "duplicate question", question[:80])
    if normalize(answer).rstrip("?.! ") == normalize(question).rstrip("?.! "):
        return Verdict(False, "answer repeats the question")
    for text in (question, answer):
        if (foreign := _foreign_facts(text, source)) is not None:
            return foreign
    found = content_words(answer)
    missing = [w for w in found if not source.has_word(w)]
    if found and len(found) - len(missing) < MIN_WORDS_FOUND * len(found):
        return Verdict(False, "words not in the passage", ", ".join(missing[:8]))
    if len(answer) > MAX_ANSWER_CHARS and len(answer) > len(source.text) / 2:
        return Verdict(False, "answer copies the passage", f"{len(answer)} of its {len(source.text)} characters")
    return KEPT


def ground_phrasing(phrasing: str, source: Source, seen_questions: frozenset) -> Verdict:
    """Whether another phrasing of a kept question may join it: a question, new (not in
    ``seen_questions``, the passage's questions so far), and naming nothing the passage does not hold."""
    if not _is_question(phrasing):
        return Verdict(False, "not a question", phrasing[:80])
    if normalize(phrasing) in seen_questions:
        return Verdict(False, "duplicate question", phrasing[:80])
    return _foreign_facts(phrasing, source) or KEPT
