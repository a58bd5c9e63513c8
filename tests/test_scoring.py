"""The scorer: exact match and facts match of an answer against its reference (pure Python)."""

import pytest

from farense_core.scoring import exact_match, extract_facts, normalize, score, tally

REF = ("O Farense jogou fora de casa e perdeu por 2-1 com o Leixões (Leixões 2-1 Farense). "
       "Competição: II Divisão 1990/91.")
QUESTION = "Qual foi o resultado do Farense contra o Leixões em 30 de abril de 1995?"


def test_the_reference_itself_is_right_both_ways():
    s = score(REF, REF, QUESTION)
    assert s.exact and s.facts and not s.missing and not s.contradicted


def test_case_spaces_and_accents_do_not_matter_for_exact_match():
    assert exact_match("  o FARENSE   venceu o Olhanense.", "O Farense venceu o Olhanense.")
    assert exact_match("Leixoes", "Leixões")
    assert not exact_match("O Farense venceu.", "O Farense perdeu.")
    assert normalize("Évora  e\tSão Luís") == "evora e sao luis"


def test_a_swapped_score_is_wrong():
    s = score(REF.replace("2-1", "1-2"), REF, QUESTION)
    assert not s.facts
    assert "number 2-1" in s.missing and "number 1-2" in s.contradicted


def test_the_wrong_venue_is_wrong():
    s = score(REF.replace("fora de casa", "em casa"), REF, QUESTION)
    assert not s.facts
    assert s.missing == ["venue away"] and s.contradicted == ["venue home"]


def test_the_wrong_outcome_is_wrong_even_with_the_right_score():
    s = score(REF.replace("perdeu por 2-1 com o Leixões", "venceu o Leixões por 2-1"), REF, QUESTION)
    assert not s.facts and s.contradicted == ["outcome won"]


def test_an_accent_less_name_is_right():
    s = score(REF.replace("Leixões", "Leixoes").replace("Competição", "Competicao"), REF, QUESTION)
    assert s.facts and s.exact


def test_an_extra_invented_fact_is_wrong():
    invented_score = score(REF + " Ao intervalo estava 1-1.", REF, QUESTION)
    assert not invented_score.facts and invented_score.contradicted == ["number 1-1"]
    invented_name = score(REF + " Marcou Jardel.", REF, QUESTION)
    assert not invented_name.facts and "name jardel" in invented_name.contradicted


def test_a_missing_fact_is_wrong_and_a_paraphrase_with_every_fact_is_right():
    assert not score("O Farense perdeu com o Leixões por 2-1.", REF, QUESTION).facts  # no competition, season
    reworded = ("Fora de casa, o Farense perdeu com o Leixões por 2-1 (Leixões 2-1 Farense), "
                "na II Divisão, época 1990/91. Competição confirmada.")
    s = score(reworded, REF, QUESTION)
    assert s.facts and not s.exact


def test_what_the_question_says_may_be_repeated():
    answer = "Em 30/04/1995: " + REF
    assert score(answer, REF, QUESTION).facts  # the date is the question's, in another form
    assert not score(answer, REF, "Qual foi o resultado do Farense contra o Leixões?").facts


def test_a_date_in_any_of_its_forms_is_the_same_date():
    for text in ("1995-04-30", "30/04/1995", "30 de abril de 1995", "April 30, 1995", "30 April 1995"):
        assert extract_facts(f"O jogo foi em {text}.").dates == {"1995-04-30"}, text
    assert extract_facts("Em 1 de maio de 1995.").dates == {"1995-05-01"}
    assert not extract_facts("O jogo foi em 1995-04-30.").numbers  # a date is not three numbers


def test_sentence_openers_are_not_names_but_names_are():
    facts = extract_facts("O Farense jogou. Na época 1994/95, o Sporting Clube Farense venceu.")
    assert facts.names == {"farense", "sporting", "clube"}
    assert facts.numbers == {"1994/95"}


def test_tally_per_kind():
    right, wrong = score(REF, REF), score(REF.replace("2-1", "3-0"), REF)
    result = tally([("jogo", right), ("jogo", wrong), ("clube", right)])
    assert result["all"] == {"n": 3, "exact": pytest.approx(2 / 3), "facts": pytest.approx(2 / 3)}
    assert result["by_kind"]["jogo"] == {"n": 2, "exact": 0.5, "facts": 0.5}
    assert result["by_kind"]["clube"]["facts"] == 1.0
