"""The Farense data set: reproducible, big enough, split 90/10 by fact, every training fact in several
phrasings (and once more in the probe), and its answers true to the sources.

The sources are parsed here independently of ``engine.farense_data`` (plain json, no shared helpers)."""

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from engine import farense_data as F
from farense_core.datafiles import check_file

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "data" / "sources"
GAMES = SOURCES / "DrNOFX97_mirobaldo_3.0" / "data" / "dados_jogos.json"
SQUADS = SOURCES / "DrNOFX97_mirobaldo_3.0" / "data" / "Planteis"
FILES = {"train": "train.jsonl", "valid": "valid.jsonl", "probe": "probe_paraphrase.jsonl"}
CLUB_NAMES = ("Sporting Clube Farense", "Sporting Farense", "SC Farense", "Farense")  # pt.clubs.txt, longest first
MONTHS = ("janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto", "setembro", "outubro",
          "novembro", "dezembro")
DATE_WAYS = {"iso": r"\d{4}-\d\d-\d\d", "dmy": r"\d\d/\d\d/\d{4}", "long": rf"\d{{1,2}} de ({'|'.join(MONTHS)}) de \d{{4}}"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    result = F.build(SOURCES, out, seed=0)
    lines = []
    for part, name in FILES.items():
        for line in (out / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert list(row) == ["kind", "messages"], row
            m = row["messages"]
            lines.append((part, row["kind"], m[0]["content"], m[1]["content"]))
    return out, result, lines


@pytest.fixture(scope="module")
def answers(built):
    """Question -> answer over all three files."""
    return {q: a for _, _, q, a in built[2]}


def by_fact(lines, part):
    """(kind, answer) -> the questions that ask it in one file."""
    facts = defaultdict(list)
    for p, kind, q, a in lines:
        if p == part:
            facts[kind, a].append(q)
    return facts


def date_ways(iso):
    """The ways a question may write a source date: 1995-04-30, 30/04/1995, 30 de abril de 1995."""
    y, m, d = iso[:4], iso[5:7], iso[8:]
    return (iso, f"{d}/{m}/{y}") + ((f"{int(d)} de {MONTHS[int(m) - 1]} de {y}",) if "01" <= m <= "12" else ())


def asks_date(q, iso):
    return any(re.search(rf"(?<!\d){re.escape(w)}(?!\d)", q) for w in date_ways(iso))


def without_club(q):
    """The question with the club's names taken out, so that "Sporting" is only ever the opponent."""
    for name in CLUB_NAMES:
        q = re.sub(rf"\b{name}\b", "CLUBE", q)
    return q


@pytest.fixture(scope="module")
def source_games():
    raw = json.loads(GAMES.read_text(encoding="utf-8"))
    return [(season, comp, m) for season in raw for comp in raw[season] for m in raw[season][comp]]


def farense_goals(m):
    """(Farense, opponent) from a source row, or None: Resultado is HOME-AWAY."""
    score = re.match(r"(\d+)-(\d+)", m["Resultado"])
    if not score:
        return None
    home, away = int(score[1]), int(score[2])
    if m["Local"] == "Casa":
        return home, away
    if m["Local"] == "Fora":
        return away, home
    hi, lo = max(home, away), min(home, away)
    return (lo, hi) if m["V-E-D"] == "D" else (hi, lo)


def match_answer(answers, date, opponent):
    found = {a for q, a in answers.items() if opponent in without_club(q) and asks_date(q, date) and "Farense" in q}
    assert len(found) == 1, (date, opponent, found)
    return found.pop()


def test_build_is_deterministic(tmp_path, built):
    out, _, _ = built
    F.build(SOURCES, tmp_path, seed=0)
    for name in FILES.values():
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_committed_data_is_the_build_output(built):
    out, _, _ = built
    for name in FILES.values():
        assert (ROOT / "data" / name).read_bytes() == (out / name).read_bytes(), \
            f"data/{name} is stale: run 'farense-tui data build --force'"


def test_size_split_and_format(built):
    out, result, lines = built
    lines_per_part = Counter(part for part, *_ in lines)
    assert (result.train, result.valid, result.probe) == (lines_per_part["train"], lines_per_part["valid"],
                                                          lines_per_part["probe"])
    n_facts = sum(result.counts.values())
    assert n_facts >= 2000
    assert set(result.counts) == set(F.KINDS)
    assert result.probe + result.valid == n_facts      # every fact is either trained (and probed) or held out
    assert result.train == 3 * result.probe
    assert abs(result.valid / n_facts - 0.1) < 0.005
    for kind in F.KINDS:  # 90/10 within every kind, by answer, so every kind is in the validation part too
        kind_answers = {a for _, k, _, a in lines if k == kind}
        held_out = {a for p, k, _, a in lines if k == kind and p == "valid"}
        assert len(held_out) == round(len(kind_answers) * 0.1) >= 1, kind
    questions = [q for _, _, q, _ in lines]
    assert len(set(questions)) == len(questions)  # across all three files: no question with two answers
    for name in FILES.values():
        r = check_file(out / name)
        assert r.ok and r.format == "chat", r.problem_lines()[:3]


def test_every_line_has_a_kind(built):
    _, result, lines = built
    assert {k for _, k, _, _ in lines} == set(F.KINDS)
    assert list(result.counts) == list(F.KINDS)


def test_train_facts_in_three_phrasings(built):
    train = by_fact(built[2], "train")
    assert len(train) >= 3000
    for fact, questions in train.items():
        assert len(set(questions)) >= 3, (fact, questions)


def test_facts_by_date_in_the_three_date_formats(built):
    train = by_fact(built[2], "train")
    games = [qs for (kind, _), qs in train.items() if kind == "jogo"]
    assert len(games) >= 1500
    for questions in games:
        for way, pattern in DATE_WAYS.items():
            assert any(re.search(pattern, q) for q in questions), (way, questions)
    dated = [q for _, _, q, _ in built[2] if re.search(DATE_WAYS["long"], q)]
    assert dated and not any(re.search(rf"\b0\d de ({'|'.join(MONTHS)})", q) for q in dated)  # "1 de maio"
    assert any(re.search(rf"\b1 de ({'|'.join(MONTHS)})", q) for q in dated)


def test_club_named_in_several_ways(built):
    named = Counter()
    for part, _, q, _ in built[2]:
        for name in CLUB_NAMES:
            if re.search(rf"\b(o|do|no|ao|pelo|O) {name}\b", q):
                named[part, name] += 1
                break
        else:
            pytest.fail(f"the club is not named with its article: {q!r}")
    assert sum(1 for part, _ in named if part == "train") >= 3, named
    for _, _, q, _ in built[2]:  # the contractions are made
        assert not re.search(r"\b(de|em|a|por) (o|a|os) ", q), q


def test_held_out_facts_are_held_out(built):
    lines = built[2]
    train = {(k, a) for p, k, _, a in lines if p == "train"}
    valid = [(k, a) for p, k, _, a in lines if p == "valid"]
    assert valid and not any(fact in train for fact in valid)


def test_probe_asks_train_facts_in_new_phrasings(built):
    lines = built[2]
    train_questions = {q for p, _, q, _ in lines if p == "train"}
    train = Counter((k, a) for p, k, _, a in lines if p == "train")
    probe = Counter((k, a) for p, k, _, a in lines if p == "probe")
    assert {fact: 3 * n for fact, n in probe.items()} == train  # every train fact once, all three phrasings trained
    assert not any(q in train_questions for p, _, q, _ in lines if p == "probe")


@pytest.mark.slow
def test_build_refuses_to_replace_other_contents(tmp_path):
    (tmp_path / "train.jsonl").write_text("mine\n")
    with pytest.raises(FileExistsError, match="--force"):
        F.build(SOURCES, tmp_path)
    assert (tmp_path / "train.jsonl").read_text() == "mine\n"
    res = F.build(SOURCES, tmp_path, force=True)
    assert len(res.written) == 3
    assert F.build(SOURCES, tmp_path).written == []  # identical: nothing to do, no --force needed


def test_olhanense_away_defeat_from_sources_md(answers, source_games):
    rows = [m for _, _, m in source_games if m["Local"] == "Fora" and m["Equipa"] == "Olhanense"
            and m["Resultado"] == "4-2" and m["V-E-D"] == "D"]
    assert rows
    dates = Counter(m["Data"] for _, _, m in source_games)
    row = next(m for m in rows if dates[m["Data"]] == 1)
    answer = match_answer(answers, row["Data"], "Olhanense")
    assert "fora de casa" in answer and "perdeu por 4-2" in answer and "(Olhanense 4-2 Farense)" in answer


@pytest.mark.slow
def test_match_answers_agree_with_sources(answers, source_games):
    dates = Counter(m["Data"] for _, _, m in source_games)
    plain = [m for _, _, m in source_games
             if re.fullmatch(r"\d+-\d+", m["Resultado"]) and m["V-E-D"] in "VED" and m["Local"] in ("Casa", "Fora")
             and re.fullmatch(r"\d{4}-\d\d-\d\d", m["Data"]) and dates[m["Data"]] == 1]
    sample = plain[::40]
    assert sum(m["Local"] == "Fora" for m in sample) >= 20
    for m in sample:
        f, o = farense_goals(m)
        answer = match_answer(answers, m["Data"], m["Equipa"])
        home, away = m["Resultado"].split("-")
        line = (f"Farense {home}-{away} {m['Equipa']}" if m["Local"] == "Casa" else f"{m['Equipa']} {home}-{away} Farense")
        assert f"({line})" in answer, (m, answer)
        assert ("em casa" if m["Local"] == "Casa" else "fora de casa") in answer
        expected = {"V": f"venceu {F.the(m['Equipa'])} por {f}-{o}", "D": f"perdeu por {o}-{f}", "E": f"empatou {f}-{o}"}
        assert expected[m["V-E-D"]] in answer, (m, answer)


def test_shootouts_and_extra_time(answers, source_games):
    # Moreirense (home) 1-1, 3-4 on penalties: Farense, away, won the shoot-out
    a = match_answer(answers, "2023-07-23", "Moreirense")
    assert "empatou 1-1" in a and "e venceu no desempate por grandes penalidades por 4-3" in a
    # Farense (home) 0-0 Santa Clara, 0-3 on penalties
    a = match_answer(answers, "2021-08-01", "Santa Clara")
    assert "mas perdeu no desempate" in a and "por 3-0" in a and "(Farense 0-0 Santa Clara; penáltis 0-3)" in a
    # Oriental (home) 3-2 after extra time: a Farense defeat
    a = match_answer(answers, "2014-09-28", "Oriental")
    assert "perdeu por 3-2" in a and "após prolongamento" in a and "(Oriental 3-2 Farense)" in a


@pytest.mark.slow
def test_no_question_by_placeholder_or_missing_date(answers, source_games):
    dates = Counter(m["Data"] for _, _, m in source_games)
    shared = [d for d, n in dates.items() if n > 1 and d != "-"]
    assert "1968-09-01" in shared and "0000-00-00" in shared
    for d in shared:
        assert not any(asks_date(q, d) for q in answers), d
    unplayed = [m for _, _, m in source_games if m["V-E-D"] == "-" and dates[m["Data"]] == 1]
    for m in unplayed:  # 2024-25 fixtures not played when scraped
        assert not any(asks_date(q, m["Data"]) and m["Equipa"] in without_club(q) for q in answers)


RECORD = re.compile(r"fez (\d+) jogos?: (\d+) vitórias?, (\d+) empates? e (\d+) derrotas?, "
                    r"com (\d+) golos? marcados? e (\d+) sofridos?")


def expected_record(rows):
    played = [m for m in rows if m["V-E-D"] in ("V", "E", "D")]
    goals = [farense_goals(m) for m in played if farense_goals(m)]
    return (len(played), sum(m["V-E-D"] == "V" for m in played), sum(m["V-E-D"] == "E" for m in played),
            sum(m["V-E-D"] == "D" for m in played), sum(g[0] for g in goals), sum(g[1] for g in goals))


@pytest.mark.slow
def test_season_records_agree_with_sources(answers, source_games):
    by_season = defaultdict(list)
    for season, _, m in source_games:
        by_season[season].append(m)
    checked = 0
    for season, rows in by_season.items():
        s = re.escape(season.replace("-", "/"))
        found = {a for q, a in answers.items()
                 if re.fullmatch(rf"(Qual foi o registo do CLUBE na época {s}|Como correu a época {s} ao CLUBE"
                                 rf"|Quantos jogos, vitórias, empates e derrotas teve o CLUBE na época {s}"
                                 rf"|Na época {s}, quantos jogos ganhou, empatou e perdeu o CLUBE"
                                 rf"|Qual foi o balanço do CLUBE na época {s})\?", without_club(q))}
        assert len(found) == 1, season
        found = found.pop()
        assert tuple(map(int, RECORD.search(found).groups())) == expected_record(rows), (season, found)
        checked += 1
    assert checked == len(by_season) == 91


def test_head_to_head_agrees_with_sources(answers, source_games):
    for club in ("Olhanense", "Portimonense", "Benfica", "Sporting"):
        rows = [m for _, _, m in source_games if m["Equipa"] == club]
        found = {a for q, a in answers.items() if re.search(rf"\bo {club}( e com que resultados|, quantas vitórias.*)?\?$",
                                                            without_club(q))
                 and re.search("historial|registo de confrontos|Quantas vezes|balanço dos jogos|quantas vitórias", q)}
        assert len(found) == 1, club
        found = found.pop()
        assert f"o Farense defrontou o {club} em" in found
        assert tuple(map(int, RECORD.search(found.replace("defrontou o " + club + " em", "fez")).groups())) \
            == expected_record(rows)


def test_squads_deduplicated_across_files(answers):
    players = defaultdict(set)
    for path in sorted(SQUADS.glob("*.json")):
        for row in json.loads(path.read_text(encoding="utf-8")):
            season = row["Época"]
            if "154" in season:
                season = "2024/2025"
            players[f"{season[:5]}{season[-2:]}"].add(row["Link"])
    assert "1986/87" in players and "2024/25" in players  # one only in its own file, one only in the merged ones
    for season in ("1986/87", "1995/96", "2023/24", "2024/25"):
        found = {a for q, a in answers.items() if season in q and ("plantel" in q or "jogadores" in q or "quem jogava" in q)
                 and not re.search("guarda-redes|defesas|médios|avançados", q)}
        assert len(found) == 1, season
        assert f"({len(players[season])} jogadores registados)" in found.pop()


def test_club_facts(built):
    club = [(q, a) for _, k, q, a in built[2] if k == "clube"]
    founded = [a for q, a in club if re.search("fundad|fundação|nasceu|existe", q)]
    names = [a for q, a in club if "nome" in q]
    assert founded and names
    for a in founded:
        assert "1910" in a and "Faro" in a
    for a in names:
        assert "Sporting Clube Farense" in a


def test_article_and_contractions():
    assert F.the("Olhanense", "com") == "com o Olhanense"
    assert F.the("Académica OAF", "contra") == "contra a Académica OAF"
    assert F.the("Os Bucelenses", "de") == "dos Bucelenses"
