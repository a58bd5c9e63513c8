"""Is an answer right? Exact match and facts match of a model's answer against the reference.

Pure Python (no mlx): the evaluator, the trainer's reports and the UI use it.

- **exact**: equal after normalising case, spaces and accents (``normalize``).
- **facts**: every fact of the reference is in the answer, and the answer contradicts none.
  The facts of a text are its numbers (a score ``2-0``, a season ``1994/95`` and a plain ``12``
  each count as one token, order kept, so a swapped score is a different fact), its dates (in any
  of the forms 1995-04-30, 30/04/1995, "30 de abril de 1995", "April 30, 1995" or "30 April 1995",
  all read as one date), its proper names (capitalised words that are not sentence-opening function words; compared
  without accents or case, so "Leixoes" matches "Leixões") and the side of exclusive pairs such as
  home or away and won, drew or lost. An answer contradicts the reference when it states a number,
  date or name the reference does not hold (and the question did not mention), or the other side of
  an exclusive pair: an invented extra fact is as wrong as a missing one.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Optional

MONTHS = {
    # Portuguese
    "janeiro": 1, "fevereiro": 2, "marco": 3, "abril": 4, "maio": 5, "junho": 6, "julho": 7,
    "agosto": 8, "setembro": 9, "outubro": 10, "novembro": 11, "dezembro": 12,
    # English
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7,
    "august": 8, "september": 9, "october": 10, "november": 11, "december": 12,
}
_MONTH = "|".join(MONTHS)

# capitalised words that open sentences and name nothing (compared without accents, lowercase)
FUNCTION_WORDS = frozenset("""
o a os as um uma uns umas e em no na nos nas do da dos das de ao aos entre ha nao sim mas
com por para pelo pela se que quem qual quais quando onde como porque foi era sao este esta
esse essa isso isto nesse nessa neste nesta sobre segundo ja tambem ainda depois antes apos
fora dentro ate desde sem contra assim entao sempre nunca aqui ali la hoje ontem
the an in on at of and or but to for with by from this that these those it its is was were
there here when where what which who how yes no not
""".split())

# mutually exclusive statements: (name, ((side, pattern), ...)); patterns match normalised text
EXCLUSIVE = (
    ("venue", (("away", r"\bfora de casa\b|\baway\b"),
               ("home", r"\bem casa\b|\bat home\b"))),
    ("outcome", (("won", r"\bvenceu\b|\bganhou\b|\bwon\b"),
                 ("lost", r"\bperdeu\b|\blost\b"),
                 ("drew", r"\bempatou\b|\bdrew\b"))),
)

_DATE_ISO = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_DATE_DMY = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b")
_DATE_LONG_PT = re.compile(rf"\b(\d{{1,2}})(?:\.?º)? de ({_MONTH}) de (\d{{4}})\b")
_DATE_LONG_EN = re.compile(rf"\b({_MONTH}) (\d{{1,2}}),? (\d{{4}})\b")
_DATE_DAY_MONTH_EN = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)? ({_MONTH}),? (\d{{4}})\b")
_NUMBER = re.compile(r"\d+(?:[-/.:]\d+)*")
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*|[\"“«(]\s*)$")


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize(text: str) -> str:
    """Lowercase, no accents, single spaces, no surrounding spaces."""
    return " ".join(strip_accents(text).lower().split())


def exact_match(answer: str, reference: str) -> bool:
    return normalize(answer) == normalize(reference)


@dataclass(frozen=True)
class Facts:
    """What a text states: dates (ISO), numbers, names (normalised) and exclusive sides."""

    dates: frozenset = frozenset()
    numbers: frozenset = frozenset()
    names: frozenset = frozenset()
    sides: dict = field(default_factory=dict)  # group -> frozenset of sides stated

    def describe(self) -> list[str]:
        out = [f"date {d}" for d in sorted(self.dates)] + [f"number {n}" for n in sorted(self.numbers)]
        out += [f"name {n}" for n in sorted(self.names)]
        out += [f"{g} {s}" for g, sides in sorted(self.sides.items()) for s in sorted(sides)]
        return out


def _iso(y: str, m: int, d: str) -> Optional[str]:
    y, d = int(y), int(d)
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return None
    return f"{y:04d}-{m:02d}-{d:02d}"


def _take_dates(text: str) -> tuple[set[str], str]:
    """The dates in ``text`` (normalised, accent-free) and the text with them blanked out."""
    found: set[str] = set()

    def keep(iso: Optional[str], m: re.Match) -> str:
        if iso is None:
            return m.group(0)
        found.add(iso)
        return " "

    text = _DATE_ISO.sub(lambda m: keep(_iso(m[1], int(m[2]), m[3]), m), text)
    text = _DATE_DMY.sub(lambda m: keep(_iso(m[3], int(m[2]), m[1]), m), text)
    text = _DATE_LONG_PT.sub(lambda m: keep(_iso(m[3], MONTHS[m[2]], m[1]), m), text)
    text = _DATE_LONG_EN.sub(lambda m: keep(_iso(m[3], MONTHS[m[1]], m[2]), m), text)
    text = _DATE_DAY_MONTH_EN.sub(lambda m: keep(_iso(m[3], MONTHS[m[2]], m[1]), m), text)
    return found, text


def extract_facts(text: str) -> Facts:
    plain = strip_accents(text)
    lowered = plain.lower()
    dates, rest = _take_dates(lowered)
    numbers = {n.rstrip(".:") for n in _NUMBER.findall(rest)}
    # names from the original casing, with the dates and numbers left in place (positions matter)
    names = set()
    for m in _WORD.finditer(plain):
        word = m.group(0)
        if not word[0].isupper():
            continue
        low = word.lower()
        if low in FUNCTION_WORDS and _SENTENCE_START.search(plain[:m.start()]):
            continue
        if low in MONTHS:
            continue  # a month with a capital (English) belongs to a date
        names.add(low)
    spaced = " ".join(lowered.split())
    sides = {}
    for group, options in EXCLUSIVE:
        stated = frozenset(side for side, pattern in options if re.search(pattern, spaced))
        if stated:
            sides[group] = stated
    return Facts(frozenset(dates), frozenset(numbers), frozenset(names), sides)


@dataclass
class Score:
    exact: bool
    facts: bool
    missing: list[str] = field(default_factory=list)       # facts of the reference not in the answer
    contradicted: list[str] = field(default_factory=list)  # facts the answer states against the reference


def score(answer: str, reference: str, question: str = "") -> Score:
    """Exact and facts match of ``answer`` against ``reference``; facts the question itself
    states may be repeated by the answer without counting as invented."""
    ref, got = extract_facts(reference), extract_facts(answer)
    asked = extract_facts(question) if question else Facts()
    missing = ([f"date {d}" for d in sorted(ref.dates - got.dates)]
               + [f"number {n}" for n in sorted(ref.numbers - got.numbers)]
               + [f"name {n}" for n in sorted(ref.names - got.names)])
    contradicted = ([f"date {d}" for d in sorted(got.dates - ref.dates - asked.dates)]
                    + [f"number {n}" for n in sorted(got.numbers - ref.numbers - asked.numbers)]
                    + [f"name {n}" for n in sorted(got.names - ref.names - asked.names)])
    for group, sides in ref.sides.items():
        stated = got.sides.get(group, frozenset())
        missing += [f"{group} {s}" for s in sorted(sides - stated)]
        contradicted += [f"{group} {s}" for s in sorted(stated - sides)]
    return Score(exact_match(answer, reference), not missing and not contradicted, missing, contradicted)


# ------------------------------------------------------------------ reports


@dataclass
class Tally:
    n: int = 0
    exact: int = 0
    facts: int = 0

    def add(self, s: Score) -> None:
        self.n += 1
        self.exact += s.exact
        self.facts += s.facts

    def as_dict(self) -> dict:
        return {"n": self.n, "exact": self.exact / self.n if self.n else 0.0,
                "facts": self.facts / self.n if self.n else 0.0}


def tally(scores: Iterable[tuple[str, Score]]) -> dict:
    """{"all": {n, exact, facts}, "by_kind": {kind: {...}}} from (kind, score) pairs."""
    total, kinds = Tally(), {}
    for kind, s in scores:
        total.add(s)
        kinds.setdefault(kind or "all", Tally()).add(s)
    return {"all": total.as_dict(), "by_kind": {k: t.as_dict() for k, t in sorted(kinds.items())}}
