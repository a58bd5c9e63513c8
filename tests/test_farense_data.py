"""The Farense data set: reproducible, big enough, split 90/10, and its answers true to the sources.

The sources are parsed here independently of ``engine.farense_data`` (plain json, no shared helpers)."""

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from engine import farense_data as F
from engine.datatools import check_file

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "data" / "sources"
GAMES = SOURCES / "DrNOFX97_mirobaldo_3.0" / "data" / "dados_jogos.json"
SQUADS = SOURCES / "DrNOFX97_mirobaldo_3.0" / "data" / "Planteis"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    result = F.build(SOURCES, out, seed=0)
    examples = []
    for name in ("train", "valid"):
        for line in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            m = json.loads(line)["messages"]
            examples.append((name, m[0]["content"], m[1]["content"]))
    return out, result, examples


@pytest.fixture(scope="module")
def answers(built):
    return {q: a for _, q, a in built[2]}


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
    d, mo, y = date[8:], date[5:7], date[:4]
    found = [a for q, a in answers.items()
             if opponent in q and (date in q or f"{d}/{mo}/{y}" in q) and "Farense" in q]
    assert len(found) == 1, (date, opponent, found)
    return found[0]


def test_build_is_deterministic(tmp_path, built):
    out, _, _ = built
    F.build(SOURCES, tmp_path, seed=0)
    for name in ("train.jsonl", "valid.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_committed_data_is_the_build_output(built):
    out, _, _ = built
    for name in ("train.jsonl", "valid.jsonl"):
        assert (ROOT / "data" / name).read_bytes() == (out / name).read_bytes(), \
            f"data/{name} is stale: run 'farense-tui data build --force'"


def test_size_split_and_format(built):
    out, result, examples = built
    n = len(examples)
    assert n >= 2000
    n_valid = sum(1 for part, _, _ in examples if part == "valid")
    assert n_valid == sum(round(c * 0.1) for c in result.counts.values())
    assert abs(n_valid / n - 0.1) < 0.005
    assert (result.train, result.valid) == (n - n_valid, n_valid)
    assert set(result.counts) == set(F.KINDS)  # every kind is there ...
    valid_kinds = Counter(e.kind for e in F.split_examples(F.build_examples(SOURCES), 0)[1])
    assert set(valid_kinds) == set(F.KINDS)   # ... and in the validation part too
    questions = [q for _, q, _ in examples]
    assert len(set(questions)) == len(questions)
    for name in ("train.jsonl", "valid.jsonl"):
        r = check_file(out / name)
        assert r.ok and r.format == "chat", r.problem_lines()[:3]


def test_build_refuses_to_replace_other_contents(tmp_path):
    (tmp_path / "train.jsonl").write_text("mine\n")
    with pytest.raises(FileExistsError, match="--force"):
        F.build(SOURCES, tmp_path)
    assert (tmp_path / "train.jsonl").read_text() == "mine\n"
    res = F.build(SOURCES, tmp_path, force=True)
    assert len(res.written) == 2
    assert F.build(SOURCES, tmp_path).written == []  # identical: nothing to do, no --force needed


def test_olhanense_away_defeat_from_sources_md(answers, source_games):
    rows = [m for _, _, m in source_games if m["Local"] == "Fora" and m["Equipa"] == "Olhanense"
            and m["Resultado"] == "4-2" and m["V-E-D"] == "D"]
    assert rows
    dates = Counter(m["Data"] for _, _, m in source_games)
    row = next(m for m in rows if dates[m["Data"]] == 1)
    answer = match_answer(answers, row["Data"], "Olhanense")
    assert "fora de casa" in answer and "perdeu por 4-2" in answer and "(Olhanense 4-2 Farense)" in answer


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


def test_no_question_by_placeholder_or_missing_date(answers, source_games):
    dates = Counter(m["Data"] for _, _, m in source_games)
    shared = [d for d, n in dates.items() if n > 1 and d != "-"]
    assert "1968-09-01" in shared and "0000-00-00" in shared
    for d in shared:
        dmy = f"{d[8:]}/{d[5:7]}/{d[:4]}"
        assert not any(d in q or dmy in q for q in answers), d
    unplayed = [m for _, _, m in source_games if m["V-E-D"] == "-" and dates[m["Data"]] == 1]
    for m in unplayed:  # 2024-25 fixtures not played when scraped
        assert not any(m["Data"] in q and m["Equipa"] in q for q in answers)


RECORD = re.compile(r"fez (\d+) jogos?: (\d+) vitórias?, (\d+) empates? e (\d+) derrotas?, "
                    r"com (\d+) golos? marcados? e (\d+) sofridos?")


def expected_record(rows):
    played = [m for m in rows if m["V-E-D"] in ("V", "E", "D")]
    goals = [farense_goals(m) for m in played if farense_goals(m)]
    return (len(played), sum(m["V-E-D"] == "V" for m in played), sum(m["V-E-D"] == "E" for m in played),
            sum(m["V-E-D"] == "D" for m in played), sum(g[0] for g in goals), sum(g[1] for g in goals))


def test_season_records_agree_with_sources(answers, source_games):
    by_season = defaultdict(list)
    for season, _, m in source_games:
        by_season[season].append(m)
    checked = 0
    for season, rows in by_season.items():
        s = season.replace("-", "/")
        found = [a for q, a in answers.items()
                 if re.fullmatch(rf"(Qual foi o registo do Farense na época|Como correu a época|Quantos jogos, vitórias, "
                                 rf"empates e derrotas teve o Farense na época) {re.escape(s)}( ao Farense)?\?", q)]
        assert len(found) == 1, season
        assert tuple(map(int, RECORD.search(found[0]).groups())) == expected_record(rows), (season, found[0])
        checked += 1
    assert checked == len(by_season) == 91


def test_head_to_head_agrees_with_sources(answers, source_games):
    for club in ("Olhanense", "Portimonense", "Benfica", "Sporting"):
        rows = [m for _, _, m in source_games if m["Equipa"] == club]
        found = [a for q, a in answers.items() if q.endswith((f"o {club}?", f"o {club} e com que resultados?"))
                 and ("historial" in q or "registo de confrontos" in q or "Quantas vezes" in q)]
        assert len(found) == 1, club
        assert f"o Farense defrontou o {club} em" in found[0]
        assert tuple(map(int, RECORD.search(found[0].replace("defrontou o " + club + " em", "fez")).groups())) \
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
        found = [a for q, a in answers.items() if season in q and ("plantel" in q or "Que jogadores" in q)]
        assert len(found) == 1, season
        assert f"({len(players[season])} jogadores registados)" in found[0]


def test_club_facts(answers):
    a = answers["Quando foi fundado o Farense?"]
    assert "1910" in a and "Faro" in a
    assert "Sporting Clube Farense" in answers["Qual é o nome completo do Farense?"]


def test_article_and_contractions():
    assert F.the("Olhanense", "com") == "com o Olhanense"
    assert F.the("Académica OAF", "contra") == "contra a Académica OAF"
    assert F.the("Os Bucelenses", "de") == "dos Bucelenses"
