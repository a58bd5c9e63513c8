"""The Farense question-answer set: built reproducibly from the source files in ``data/sources/``.

Every answer is read from the sources (see ``data/sources/README.md``); nothing is made up:

- ``dados_jogos.json`` (mirobaldo, MIT, scraped from zerozero.pt): every Farense game by season and
  competition. ``Resultado`` is HOME-AWAY, not Farense-first; ``Local`` says which side Farense was and
  ``V-E-D`` (vitória/empate/derrota) must agree with the score, or the build stops.
- ``Planteis/*.json`` (same): squads by season. The per-season files and the merged
  ``plantel_farense_epocas_100_154.json`` repeat each other; players are de-duplicated by (season, link).
- ``pt.clubs.txt`` (openfootball, CC0): "SC Farense, 1910, Faro" and the club's name variants.

Dates: zerozero gives whole groups of early games one placeholder date (20 games on 1968-09-01,
six on "0000-00-00"), so a date shared by two or more Farense games is not a match date; such
games, and those with no date, get no question by date (their season, competition and head-to-head
figures still count them).

Facts, not examples, are the unit: each fact (kind, answer) is asked in four phrasings, each from its own
template, with the club named in its source names ("o Farense", "o SC Farense", ...) and a date written as
1995-04-30, 30/04/1995 or "30 de abril de 1995". The facts are split 90/10; ``train.jsonl`` asks each
training fact in three phrasings (one date format each) because a small model learns a fact, rather than
the form of its answer, only from several phrasings (Allen-Zhu & Li, "Physics of Language Models 3.1");
``probe_paraphrase.jsonl`` asks it once more in the fourth, to measure recall beyond the trained wording;
``valid.jsonl`` asks each held-out fact once, and no phrasing of it is trained.

The output is the same bytes on every run: inputs are sorted, phrasings are drawn from a seeded
``random.Random`` in a fixed order, and the 90/10 split is seeded and stratified by kind.
Standard library only.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Iterable, Optional

GAMES_FILE = Path("DrNOFX97_mirobaldo_3.0/data/dados_jogos.json")
SQUADS_DIR = Path("DrNOFX97_mirobaldo_3.0/data/Planteis")
CLUBS_FILE = Path("openfootball_clubs/europe/portugal/pt.clubs.txt")
CLUB_NAME = "SC Farense"
# the merged squad file numbers seasons from "época 100" = 1970/71 (its first 54 ids are 1970/71 to
# 2023/24 in order); the one season present only by id, 154, is therefore 2024/25
FIRST_SEASON_ID, FIRST_SEASON_YEAR = 100, 1970
VALID_FRACTION = 0.1
OUTCOMES = ("V", "E", "D")


class SourceError(ValueError):
    """A source file is missing or says something the builder cannot read unambiguously."""


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Game:
    season: str                 # "1994-95", as in the source
    competition: str
    date: Optional[str]         # ISO date; None when missing, invalid or a shared placeholder
    venue: str                  # "Casa" (Farense at home), "Fora" (away) or "" (not recorded)
    opponent: str
    outcome: str                # "V", "E", "D", or "-" when the source has no result
    home: Optional[int] = None  # score in the source's HOME-AWAY order (after extra time)
    away: Optional[int] = None
    extra_time: bool = False
    penalties: Optional[tuple[int, int]] = None  # shoot-out, HOME-AWAY
    awarded: bool = False       # "DA": decided administratively, no score

    @property
    def played(self) -> bool:
        return self.outcome in OUTCOMES

    @property
    def goals(self) -> Optional[tuple[int, int]]:
        """(Farense, opponent), or None when there is no score."""
        if self.home is None:
            return None
        if self.venue == "Casa":
            return self.home, self.away
        if self.venue == "Fora":
            return self.away, self.home
        high, low = max(self.home, self.away), min(self.home, self.away)  # venue unknown: V-E-D decides
        return (low, high) if self.outcome == "D" else (high, low)

    @property
    def farense_penalties(self) -> Optional[tuple[int, int]]:
        if self.penalties is None:
            return None
        return self.penalties if self.venue == "Casa" else self.penalties[::-1]


_RESULT = re.compile(r"(\d+)-(\d+)(?:\((?:(a\.p\.)|(\d+)-(\d+) g\.p\.)\))?")


def parse_result(text: str) -> dict:
    """``"2-2(4-2 g.p.)"`` -> home, away, extra_time, penalties, awarded (home-away order kept)."""
    text = text.strip()
    if text == "DA":
        return {"awarded": True}
    if text in ("-", ""):
        return {}
    m = _RESULT.fullmatch(text)
    if not m:
        raise SourceError(f"unknown result {text!r}")
    home, away, aet, ph, pa = m.groups()
    return {"home": int(home), "away": int(away), "extra_time": bool(aet),
            "penalties": (int(ph), int(pa)) if ph is not None else None}


def _check_outcome(g: Game, where: str) -> None:
    if g.goals is None or not g.played:
        return
    f, o = g.goals
    expected = "V" if f > o else "D" if f < o else "E"
    if g.outcome != expected:
        raise SourceError(f"{where}: V-E-D is {g.outcome!r} but the score says {expected!r}")
    if g.penalties is not None and f != o:
        raise SourceError(f"{where}: a penalty shoot-out after a game that was not drawn")


def _iso_date(text: str) -> Optional[str]:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return None


def load_games(sources: Path) -> list[Game]:
    """All games, seasons and competitions in source order; placeholder dates set to None."""
    path = Path(sources) / GAMES_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{path} is missing") from None
    rows = [(season, comp, m) for season in sorted(raw) for comp in raw[season] for m in raw[season][comp]]
    per_date = Counter(m["Data"] for _, _, m in rows)
    games = []
    for season, comp, m in rows:
        d = _iso_date(m["Data"]) if per_date[m["Data"]] == 1 else None
        where = f"{path.name} {season} {comp} {m['Data']} {m['Equipa']}"
        try:
            g = Game(season=season, competition=comp.strip(), date=d, venue=m["Local"], opponent=m["Equipa"].strip(),
                     outcome=m["V-E-D"], **parse_result(m["Resultado"]))
        except SourceError as e:
            raise SourceError(f"{where}: {e}") from None
        if g.venue not in ("Casa", "Fora", ""):
            raise SourceError(f"{where}: unknown Local {g.venue!r}")
        _check_outcome(g, where)
        games.append(g)
    return games


@dataclass(frozen=True)
class Player:
    name: str
    position: str
    season: str  # "1994/95"
    link: str


def squad_season(label: str) -> str:
    """'1994/1995' -> '1994/95'; 'época_154' / 'época_id=154' -> '2024/25'."""
    m = re.fullmatch(r"(\d{4})/(\d{4})", label)
    if m:
        return f"{m.group(1)}/{m.group(2)[2:]}"
    m = re.fullmatch(r"época(?:_id=|_)(\d+)", label)
    if m:
        year = FIRST_SEASON_YEAR + int(m.group(1)) - FIRST_SEASON_ID
        return f"{year}/{(year + 1) % 100:02d}"
    raise SourceError(f"unknown squad season {label!r}")


def load_squads(sources: Path) -> dict[str, list[Player]]:
    """Season -> players, de-duplicated by (season, zerozero link) across all the squad files."""
    folder = Path(sources) / SQUADS_DIR
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SourceError(f"no squad files in {folder}")
    seen: set[tuple[str, str]] = set()
    squads: dict[str, list[Player]] = defaultdict(list)
    for path in files:
        for row in json.loads(path.read_text(encoding="utf-8")):
            season = squad_season(row["Época"])
            key = (season, row["Link"] or row["Nome"])
            if key in seen:
                continue
            seen.add(key)
            squads[season].append(Player(row["Nome"].strip(), row["Posição"].strip(), season, row["Link"]))
    return {s: squads[s] for s in sorted(squads)}


@dataclass(frozen=True)
class Club:
    name: str
    founded: int
    city: str
    variants: tuple[str, ...]


def load_club(sources: Path) -> Club:
    path = Path(sources) / CLUBS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SourceError(f"{path} is missing") from None
    for i, line in enumerate(lines):
        fields = [f.strip() for f in line.split("#")[0].split(",")]
        if fields[0] == CLUB_NAME and len(fields) == 3:
            variants = []
            for more in lines[i + 1:]:
                if not more.strip().startswith("|"):
                    break
                variants += [v.strip() for v in more.strip().strip("|").split("|") if v.strip()]
            return Club(CLUB_NAME, int(fields[1]), fields[2], tuple(variants))
    raise SourceError(f"{path} has no line '{CLUB_NAME}, YEAR, CITY'")


# ---------------------------------------------------------------------------------------------
# Portuguese


_FEMININE = ("Académica", "Juventude", "União", "U. ", "UD ", "USC ", "AD ", "Naval", "Ovarense", "B SAD")
_PLURAL = ("Pescadores", "Nazarenos", "Armacenenses", "Ferroviários")
_CONTRACT = {"": {"o": "o", "a": "a", "os": "os"}, "de": {"o": "do", "a": "da", "os": "dos"},
             "em": {"o": "no", "a": "na", "os": "nos"}, "a": {"o": "ao", "a": "à", "os": "aos"},
             "com": {"o": "com o", "a": "com a", "os": "com os"}, "contra": {"o": "contra o", "a": "contra a", "os": "contra os"},
             "por": {"o": "pelo", "a": "pela", "os": "pelos"}}


def the(club: str, prep: str = "") -> str:
    """A club with its article, after a preposition: the('Olhanense', 'com') -> 'com o Olhanense'."""
    if club.startswith("Os "):
        article, club = "os", club[3:]
    elif club.startswith("O "):
        article, club = "o", club[2:]
    elif club.startswith(_PLURAL):
        article = "os"
    elif club.startswith(_FEMININE):
        article = "a"
    else:
        article = "o"
    return f"{_CONTRACT[prep][article]} {club}"


def n_of(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " e " + items[-1]


def season_label(season: str) -> str:
    """'1994-95' -> '1994/95'."""
    return season.replace("-", "/")


def dmy(iso: str) -> str:
    y, m, d = iso.split("-")
    return f"{d}/{m}/{y}"


def describe_game(g: Game) -> str:
    """One sentence, unambiguous about who scored what: the outcome from Farense's side, then the
    score in home-away order (or named sides when the venue is not recorded)."""
    where = {"Casa": "jogou em casa e ", "Fora": "jogou fora de casa e ", "": ""}[g.venue]
    opp = the(g.opponent)
    if g.awarded:
        verdict = {"V": "vitória", "D": "derrota", "E": "empate"}[g.outcome]
        venue = {"Casa": " (em casa)", "Fora": " (fora de casa)", "": ""}[g.venue]
        return (f"O jogo {the(g.opponent, 'com')}{venue} foi decidido administrativamente, com {verdict} atribuída ao "
                f"Farense; a fonte não regista marcador.")
    f, o = g.goals
    if g.venue == "Casa":
        line = f"Farense {g.home}-{g.away} {g.opponent}"
    elif g.venue == "Fora":
        line = f"{g.opponent} {g.home}-{g.away} Farense"
    else:
        line = f"Farense {f}, {g.opponent} {o}"
    aet = " após prolongamento" if g.extra_time else ""
    if g.penalties is not None:
        pf, po = g.farense_penalties
        ph, pa = g.penalties
        verdict = " e venceu" if pf > po else ", mas perdeu"
        return (f"O Farense {where}empatou {f}-{o} {the(g.opponent, 'com')}{verdict} no desempate por grandes "
                f"penalidades por {max(pf, po)}-{min(pf, po)} ({line}; penáltis {ph}-{pa}).")
    if g.outcome == "V":
        return f"O Farense {where}venceu {opp} por {f}-{o}{aet} ({line})."
    if g.outcome == "D":
        return f"O Farense {where}perdeu por {o}-{f} {the(g.opponent, 'com')}{aet} ({line})."
    return f"O Farense {where}empatou {f}-{o} {the(g.opponent, 'com')}{aet} ({line})."


@dataclass
class Record:
    games: int = 0
    wins: int = 0
    draws: int = 0
    defeats: int = 0
    goals_for: int = 0
    goals_against: int = 0
    awarded: int = 0
    unplayed: int = 0  # rows with no result


def record(games: Iterable[Game]) -> Record:
    """Games with a result count; a shoot-out counts as the draw it was (V-E-D says 'E');
    an awarded game counts as its V-E-D but adds no goals."""
    r = Record()
    for g in games:
        if not g.played:
            r.unplayed += 1
            continue
        r.games += 1
        r.wins += g.outcome == "V"
        r.draws += g.outcome == "E"
        r.defeats += g.outcome == "D"
        if g.awarded:
            r.awarded += 1
        else:
            f, o = g.goals
            r.goals_for += f
            r.goals_against += o
    return r


def record_text(r: Record) -> str:
    """'12 jogos: 5 vitórias, 4 empates e 3 derrotas, com 17 golos marcados e 10 sofridos'."""
    text = (f"{n_of(r.games, 'jogo', 'jogos')}: {n_of(r.wins, 'vitória', 'vitórias')}, "
            f"{n_of(r.draws, 'empate', 'empates')} e {n_of(r.defeats, 'derrota', 'derrotas')}, com "
            f"{n_of(r.goals_for, 'golo marcado', 'golos marcados')} e {r.goals_against} "
            f"{'sofrido' if r.goals_against == 1 else 'sofridos'}")
    return text


def record_notes(r: Record) -> str:
    notes = []
    if r.awarded:
        notes.append(f"{n_of(r.awarded, 'jogo decidido administrativamente não conta', 'jogos decididos administrativamente não contam')} para os golos")
    if r.unplayed:
        notes.append(f"não {'conta' if r.unplayed == 1 else 'contam'} {n_of(r.unplayed, 'jogo sem resultado', 'jogos sem resultado')} na fonte")
    return f" ({'; '.join(notes)})" if notes else ""


# ---------------------------------------------------------------------------------------------
# Facts and their phrasings


KINDS = ("jogo", "epoca", "competicao", "confronto", "plantel", "jogador", "clube")
TRAIN_PHRASINGS = 3  # a fact becomes extractable when training sees it in several phrasings (Allen-Zhu & Li, 3.1)
MONTHS = ("janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto", "setembro", "outubro",
          "novembro", "dezembro")


def long_date(iso: str) -> str:
    """'1995-05-01' -> '1 de maio de 1995'."""
    y, m, d = iso.split("-")
    return f"{int(d)} de {MONTHS[int(m) - 1]} de {y}"


DATE_FORMATS = (str, dmy, long_date)  # 1995-04-30, 30/04/1995, 30 de abril de 1995


@dataclass(frozen=True)
class Fact:
    kind: str
    answer: str
    questions: tuple[str, ...]  # TRAIN_PHRASINGS for training, then the probe's; each from its own template


@dataclass(frozen=True)
class Example:
    kind: str
    question: str
    answer: str

    def to_json(self) -> dict:
        return {"kind": self.kind, "messages": [{"role": "user", "content": self.question},
                                                {"role": "assistant", "content": self.answer}]}


def _club_forms(name: str) -> dict[str, str]:
    """The club's name with its article, as templates use it: {o_farense}, {do_farense}, ..."""
    return {"o_farense": the(name), "do_farense": the(name, "de"), "no_farense": the(name, "em"),
            "ao_farense": the(name, "a"), "pelo_farense": the(name, "por")}


def _opponent_forms(club: str) -> dict[str, str]:
    return {"opp": the(club), "contra_opp": the(club, "contra"), "com_opp": the(club, "com"), "ao_opp": the(club, "a")}


@dataclass
class _Maker:
    rng: random.Random
    clubs: tuple[dict[str, str], ...]  # _club_forms of each of the club's names
    facts: list[Fact] = field(default_factory=list)

    def add(self, kind: str, templates: tuple[str, ...], answer: str, day: Optional[str] = None, **values) -> None:
        """One fact in TRAIN_PHRASINGS + 1 phrasings from as many templates. The training ones name the club
        in different ways and, for a fact asked by date, write the date in one format each; the last one,
        the probe's, takes any name and format."""
        n = TRAIN_PHRASINGS + 1
        picked = self.rng.sample(templates, n)
        clubs = self.rng.sample(self.clubs, TRAIN_PHRASINGS) + [self.rng.choice(self.clubs)]
        formats = self.rng.sample(DATE_FORMATS, TRAIN_PHRASINGS) + [self.rng.choice(DATE_FORMATS)] if day else []
        dates = [fmt(day) for fmt in formats] or [None] * n
        questions = []
        for template, club, data in zip(picked, clubs, dates):
            q = template.format(data=data, **club, **values)
            questions.append(q[0].upper() + q[1:])  # a template may start with "{o_farense} ..."
        self.facts.append(Fact(kind, answer, tuple(questions)))


def _match_facts(mk: _Maker, games: list[Game]) -> None:
    templates = (
        "Qual foi o resultado {do_farense} {contra_opp} em {data}?",
        "Como terminou o jogo entre {o_farense} e {opp} em {data}?",
        "Em {data}, {o_farense} defrontou {opp}. Qual foi o resultado?",
        "Quem ganhou o jogo entre {o_farense} e {opp} disputado em {data}?",
        "Que resultado obteve {o_farense} frente {ao_opp} no dia {data}?",
    )
    for g in games:
        if g.date is None or not g.played:
            continue
        answer = f"{describe_game(g)} Competição: {g.competition}."
        mk.add("jogo", templates, answer, day=g.date, **_opponent_forms(g.opponent))


def _season_facts(mk: _Maker, games: list[Game]) -> None:
    by_season: dict[str, list[Game]] = defaultdict(list)
    for g in games:
        by_season[g.season].append(g)
    full = ("Qual foi o registo {do_farense} na época {s}?", "Como correu a época {s} {ao_farense}?",
            "Quantos jogos, vitórias, empates e derrotas teve {o_farense} na época {s}?",
            "Na época {s}, quantos jogos ganhou, empatou e perdeu {o_farense}?",
            "Qual foi o balanço {do_farense} na época {s}?")
    goals = ("Quantos golos marcou e sofreu {o_farense} na época {s}?", "Quantos golos marcou {o_farense} em {s}?",
             "Na época {s}, quantos golos marcou e quantos sofreu {o_farense}?",
             "Quantos golos marcados e sofridos teve {o_farense} na época {s}?")
    venue = ("Como se saiu {o_farense} em casa e fora de casa na época {s}?",
             "Qual foi o registo {do_farense} em casa e fora na época {s}?",
             "Na época {s}, como foram os resultados {do_farense} em casa e fora?",
             "Em {s}, {o_farense} esteve melhor em casa ou fora de casa?")
    comps = ("Que competições disputou {o_farense} na época {s}?", "Em que provas jogou {o_farense} em {s}?",
             "Na época {s}, em que competições participou {o_farense}?",
             "Quantos jogos fez {o_farense} em cada competição na época {s}?")
    comp_q = ("Como correu {o_farense} na competição {c} (época {s})?",
              "Qual foi o registo {do_farense} na prova {c} (época {s})?",
              "Na época {s}, como se saiu {o_farense} na competição {c}?",
              "Quantos jogos, vitórias, empates e derrotas teve {o_farense} na prova {c} em {s}?")
    for season, sg in by_season.items():
        s = season_label(season)
        r = record(sg)
        if r.games == 0:
            continue
        mk.add("epoca", full, f"Na época {s}, o Farense fez {record_text(r)}{record_notes(r)}.", s=s)
        mk.add("epoca", goals, f"Na época {s}, o Farense marcou {r.goals_for} e sofreu {r.goals_against} "
               f"{'golo' if r.goals_against == 1 else 'golos'} em {n_of(r.games, 'jogo', 'jogos')}{record_notes(r)}.",
               s=s)
        parts = []
        for name, key in (("em casa", "Casa"), ("fora de casa", "Fora")):
            rv = record(g for g in sg if g.venue == key)
            if rv.games:
                parts.append(f"{name} fez {record_text(rv)}{record_notes(rv)}")
        unknown = sum(1 for g in sg if g.venue == "" and g.played)
        extra = f" Há ainda {n_of(unknown, 'jogo', 'jogos')} sem local registado." if unknown else ""
        if parts:
            mk.add("epoca", venue, f"Na época {s}, o Farense {'; '.join(parts)}.{extra}", s=s)
        per_comp: dict[str, list[Game]] = defaultdict(list)
        for g in sg:
            per_comp[g.competition].append(g)
        listed = [f"{c} ({n_of(len(cg), 'jogo', 'jogos')})" for c, cg in per_comp.items()]
        mk.add("epoca", comps, f"Na época {s}, o Farense disputou: {join(listed)}.", s=s)
        for c, cg in per_comp.items():
            rc = record(cg)
            if rc.games:
                mk.add("competicao", comp_q, f"Na competição {c} (época {s}), o Farense fez {record_text(rc)}{record_notes(rc)}.",
                       c=c, s=s)


def _head_to_head_facts(mk: _Maker, games: list[Game]) -> None:
    first_season, last_season = season_label(games[0].season), season_label(games[-1].season)
    by_opp: dict[str, list[Game]] = defaultdict(list)
    for g in games:
        by_opp[g.opponent].append(g)
    overall = ("Qual é o historial {do_farense} {contra_opp}?", "Quantas vezes {o_farense} defrontou {opp} e com que resultados?",
               "Qual é o registo de confrontos entre {o_farense} e {opp}?",
               "Qual é o balanço dos jogos entre {o_farense} e {opp}?",
               "Nos jogos {com_opp}, quantas vitórias, empates e derrotas tem {o_farense}?")
    first = ("Em que época {o_farense} defrontou {opp} pela primeira vez?", "Quando foi o primeiro jogo {do_farense} {contra_opp}?",
             "Quando se defrontaram pela primeira vez {o_farense} e {opp}?",
             "Qual foi o primeiro confronto entre {o_farense} e {opp}?")
    last = ("Qual foi o último jogo {do_farense} {contra_opp}?", "Como correu o último confronto entre {o_farense} e {opp}?",
            "Quando defrontou {o_farense} {opp} pela última vez, e com que resultado?",
            "Qual foi o resultado do jogo mais recente entre {o_farense} e {opp}?")
    for opp in sorted(by_opp):
        og = by_opp[opp]
        r = record(og)
        if r.games == 0:
            continue
        v = _opponent_forms(opp)
        mk.add("confronto", overall, f"Nos jogos registados (épocas {first_season} a {last_season}), o Farense defrontou "
               f"{the(opp)} em {record_text(r)}{record_notes(r)}.", **v)
        played = [g for g in og if g.played]
        g0 = played[0]
        mk.add("confronto", first, f"Nos registos, o primeiro confronto com {the(opp)} foi na época {season_label(g0.season)}, "
               f"na competição {g0.competition}.", **v)
        final = [g for g in played if g.season == played[-1].season]
        if len(played) >= 2 and all(g.date is not None for g in final):
            g1 = max(final, key=lambda g: g.date)
            mk.add("confronto", last, f"O último jogo registado foi em {g1.date} ({g1.competition}): {describe_game(g1)}", **v)


_POSITIONS = (("Guarda Redes", "guarda-redes", "o guarda-redes", "os guarda-redes"),
              ("Defesa", "defesas", "o defesa", "os defesas"),
              ("Médio", "médios", "o médio", "os médios"),
              ("Avançado", "avançados", "o avançado", "os avançados"))


def _squad_facts(mk: _Maker, squads: dict[str, list[Player]]) -> None:
    full = ("Quem fazia parte do plantel {do_farense} na época {s}?", "Qual era o plantel {do_farense} em {s}?",
            "Que jogadores tinha {o_farense} na época {s}?", "Quais eram os jogadores {do_farense} em {s}?",
            "Na época {s}, quem jogava {no_farense}?")
    by_pos = ("Quem eram {pl} {do_farense} na época {s}?", "Que {label} tinha {o_farense} em {s}?",
              "Na época {s}, quem eram {pl} {do_farense}?", "Que {label} havia no plantel {do_farense} em {s}?")
    known = {p for p, *_ in _POSITIONS}
    for s, players in squads.items():
        groups = []
        for pos, label, one, many in _POSITIONS:
            names = sorted(p.name for p in players if p.position == pos)
            if names:
                groups.append(f"{label}: {', '.join(names)}")
                answer = (f"Na época {s}, {one} do plantel do Farense era {names[0]}." if len(names) == 1 else
                          f"Na época {s}, {many} do plantel do Farense eram {join(names)}.")
                mk.add("plantel", by_pos, answer, pl=many, label=label, s=s)
        others = sorted(f"{p.name} ({p.position})" for p in players if p.position not in known)
        if others:
            groups.append(f"outras posições: {', '.join(others)}")
        mk.add("plantel", full, f"O plantel do Farense na época {s} ({n_of(len(players), 'jogador registado', 'jogadores registados')}) — "
               f"{'; '.join(groups)}.", s=s)


def _player_facts(mk: _Maker, squads: dict[str, list[Player]]) -> None:
    templates = ("Em que épocas jogou {name} {no_farense}?", "Quando esteve {name} no plantel {do_farense}?",
                 "Em que posição jogava {name} {no_farense}, e em que épocas?",
                 "Em que épocas passou {name} {pelo_farense}?", "Quais foram as épocas de {name} {no_farense}?")
    by_name: dict[str, list[Player]] = defaultdict(list)
    for players in squads.values():
        for p in players:
            by_name[p.name].append(p)
    for name in sorted(by_name):
        rows = by_name[name]
        if len({p.link for p in rows}) > 1:
            continue  # two different players share the name: a question by name would be ambiguous
        seasons = sorted(p.season for p in rows)
        positions = sorted({p.position for p in rows})
        if len(positions) == 1:
            pos = f"{name} ({positions[0]}) fez parte do plantel do Farense"
            answer = f"{pos} {'na época ' + seasons[0] if len(seasons) == 1 else 'nas épocas ' + join(seasons)}."
        else:
            per = [f"{p.season} ({p.position})" for p in sorted(rows, key=lambda p: p.season)]
            answer = f"{name} fez parte do plantel do Farense nas épocas {join(per)}."
        mk.add("jogador", templates, answer, name=name)


def _club_facts(mk: _Maker, club: Club, games: list[Game]) -> None:
    full = "Sporting Clube Farense" if "Sporting Clube Farense" in club.variants else club.name
    facts = [
        (("Quando foi fundado {o_farense}?", "Em que ano foi fundado {o_farense}?",
          "Qual é o ano de fundação {do_farense}?", "Desde quando existe {o_farense}?"),
         f"O {full} ({club.name}) foi fundado em {club.founded}, em {club.city}."),
        (("De que cidade é {o_farense}?", "Onde fica {o_farense}?", "Qual é a cidade {do_farense}?",
          "Em que cidade joga {o_farense}?"),
         f"O {full} é um clube de {club.city}, fundado em {club.founded}."),
        (("Qual é o nome completo {do_farense}?", "Por que nomes é conhecido {o_farense}?",
          "Como também se chama {o_farense}?", "Que outros nomes tem {o_farense}?"),
         f"O nome completo é {full}; o clube também é conhecido por {join([club.name] + [v for v in club.variants if v != full])}."),
        (("Onde e quando foi fundado {o_farense}?", "Fala-me da fundação {do_farense}.",
          "Em que cidade e em que ano foi fundado {o_farense}?", "Quando e onde nasceu {o_farense}?"),
         f"O {full} foi fundado em {club.founded}, na cidade de {club.city}."),
    ]
    played = [g for g in games if g.played]
    seasons = sorted({g.season for g in played})
    total = record(played)
    facts.append((("Quantos jogos oficiais {do_farense} estão registados?",
                   "Qual é o registo total {do_farense} em todos os jogos registados?",
                   "Quantos jogos, vitórias, empates e derrotas tem {o_farense} no total?",
                   "Qual é o balanço de todos os jogos registados {do_farense}?"),
                  f"Entre as épocas {season_label(seasons[0])} e {season_label(seasons[-1])}, estão registados "
                  f"{record_text(total)}{record_notes(total)}."))
    euro = [g for g in played if g.competition.startswith(("Taça UEFA", "Liga Europa", "Taça das Taças", "Taça dos Campeões"))]
    if euro:
        comps = sorted({f"{g.competition} (época {season_label(g.season)})" for g in euro})
        games_text = " ".join(f"Em {g.date}: {describe_game(g)}" for g in sorted(euro, key=lambda g: g.date or ""))
        facts.append((("{o_farense} já jogou nas competições europeias?", "Em que competição europeia participou {o_farense}?",
                       "{o_farense} alguma vez jogou na Europa?", "Que jogos europeus fez {o_farense}?"),
                      f"Nos registos, o Farense disputou a {join(comps)}. {games_text}"))
    scored = [g for g in played if g.goals is not None]
    for label, sign, qs in (("vitória", 1, ("Qual foi a maior vitória {do_farense}?",
                                            "Qual foi o jogo em que {o_farense} ganhou por mais golos?",
                                            "Qual foi a vitória mais folgada {do_farense}?",
                                            "Qual foi a goleada mais expressiva {do_farense}?")),
                            ("derrota", -1, ("Qual foi a maior derrota {do_farense}?",
                                             "Qual foi o jogo em que {o_farense} perdeu por mais golos?",
                                             "Qual foi a derrota mais pesada {do_farense}?",
                                             "Qual foi a goleada mais pesada sofrida {pelo_farense}?"))):
        margin = max(sign * (g.goals[0] - g.goals[1]) for g in scored)
        best = [g for g in scored if sign * (g.goals[0] - g.goals[1]) == margin]
        told = [f"{'em ' + g.date if g.date else 'na época ' + season_label(g.season)} ({g.competition}): {describe_game(g)}"
                for g in best]
        answer = (f"Nos jogos registados, a maior {label} do Farense foi por {margin} golos de diferença, "
                  f"{'em ' + str(len(best)) + ' jogos' if len(best) > 1 else 'num jogo'}: " + " ".join(told))
        facts.append((qs, answer))
    for templates, answer in facts:
        mk.add("clube", templates, answer)


def build_facts(sources: Path, seed: int = 0) -> list[Fact]:
    sources = Path(sources)
    games = load_games(sources)
    squads = load_squads(sources)
    club = load_club(sources)
    names = list(dict.fromkeys((club.name,) + club.variants))
    if len(names) < TRAIN_PHRASINGS:
        raise SourceError(f"{CLUBS_FILE.name} gives {CLUB_NAME} {len(names)} names; the phrasings need {TRAIN_PHRASINGS}")
    mk = _Maker(random.Random(seed), tuple(_club_forms(n) for n in names))
    _match_facts(mk, games)
    _season_facts(mk, games)
    _head_to_head_facts(mk, games)
    _squad_facts(mk, squads)
    _player_facts(mk, squads)
    _club_facts(mk, club, games)
    questions = Counter(q for f in mk.facts for q in f.questions)
    repeated = [q for q, n in questions.items() if n > 1]
    if repeated:
        raise SourceError(f"{len(repeated)} questions would be asked twice, maybe with two answers, e.g. {repeated[0]!r}")
    return mk.facts


def split_facts(facts: list[Fact], seed: int = 0,
                valid_fraction: float = VALID_FRACTION) -> tuple[list[Fact], list[Fact]]:
    """A seeded split of the facts, stratified by kind so every kind is in both parts. Facts with the same
    answer (two games alike but for the date) go to the same part, so a held-out answer is never trained."""
    rng = random.Random(seed)
    train: list[Fact] = []
    valid: list[Fact] = []
    by_kind: dict[str, dict[str, list[Fact]]] = defaultdict(dict)
    for f in facts:
        by_kind[f.kind].setdefault(f.answer, []).append(f)
    for kind in sorted(by_kind):
        groups = list(by_kind[kind].values())
        rng.shuffle(groups)
        n_valid = round(len(groups) * valid_fraction)
        valid += [f for g in groups[:n_valid] for f in g]
        train += [f for g in groups[n_valid:] for f in g]
    return train, valid


def phrase(train: list[Fact], valid: list[Fact],
           seed: int = 0) -> tuple[list[Example], list[Example], list[Example]]:
    """The lines of train.jsonl (each train fact in its TRAIN_PHRASINGS phrasings), valid.jsonl (each held-out
    fact in one) and probe_paraphrase.jsonl (each train fact in the phrasing training never sees); each shuffled."""
    rng = random.Random(seed)
    parts = ([Example(f.kind, q, f.answer) for f in train for q in f.questions[:TRAIN_PHRASINGS]],
             [Example(f.kind, f.questions[0], f.answer) for f in valid],
             [Example(f.kind, f.questions[TRAIN_PHRASINGS], f.answer) for f in train])
    for part in parts:
        rng.shuffle(part)
    return parts


def to_jsonl(examples: Iterable[Example]) -> str:
    return "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples)


@dataclass
class BuildResult:
    counts: dict[str, int]       # facts per kind
    train: int                   # lines: TRAIN_PHRASINGS per train fact
    valid: int                   # one per held-out fact
    probe: int                   # one per train fact
    written: list[Path]          # files written (empty when they were already up to date)


def build(sources: Path, out: Path, seed: int = 0, force: bool = False,
          write: Callable[[Path, str], None] = None) -> BuildResult:
    """Build and write ``train.jsonl``, ``valid.jsonl`` and ``probe_paraphrase.jsonl`` in ``out``. An existing
    file with other contents is replaced only with ``force``; raises ``FileExistsError`` otherwise."""
    from farense_core.datafiles import PARAPHRASE_FILE

    if write is None:
        from farense_core.config import atomic_write_text as write
    facts = build_facts(sources, seed)
    train, valid, probe = phrase(*split_facts(facts, seed), seed)
    texts = {Path(out) / "train.jsonl": to_jsonl(train), Path(out) / "valid.jsonl": to_jsonl(valid),
             Path(out) / PARAPHRASE_FILE: to_jsonl(probe)}
    stale = {p: t for p, t in texts.items() if not (p.is_file() and p.read_text(encoding="utf-8") == t)}
    clash = [p for p in stale if p.exists()]
    if clash and not force:
        raise FileExistsError(f"{clash[0]} already exists with other contents; pass --force to replace it.")
    for path, text in stale.items():
        write(path, text)
    return BuildResult(dict(sorted(Counter(f.kind for f in facts).items(), key=lambda kv: KINDS.index(kv[0]))),
                       len(train), len(valid), len(probe), list(stale))
