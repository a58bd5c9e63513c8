"""The run's judges: the divergence guard, the best adapter, early stopping and advice (pure Python)."""

import math

from farense_core.health import DivergenceGuard, Progress, Validation


def feed(guard, losses, start=1):
    for step, loss in enumerate(losses, start):
        why = guard.update(step, loss)
        if why:
            return step, why
    return None


def test_a_falling_loss_never_trips_the_guard():
    guard = DivergenceGuard(3.0, 5)
    assert feed(guard, [3.0 * math.exp(-i / 30) + 0.01 * (i % 3) for i in range(300)]) is None


def test_a_tiny_loss_doubling_is_not_a_divergence():
    guard = DivergenceGuard(3.0, 5)
    # memorised facts: 0.02 -> 0.08 is four times the lowest, but far under a nat above it
    assert feed(guard, [2.0] * 5 + [0.02] * 80 + [0.08] * 40) is None


def test_a_non_finite_loss_diverges_at_once():
    guard = DivergenceGuard(3.0, 10)
    hit = feed(guard, [2.0, 1.5, 1.2, float("nan")])
    assert hit is not None and hit[0] == 4 and "nan" in hit[1]
    assert guard.first_bad == 4


def test_a_loss_that_rises_and_stays_diverges_from_where_it_rose():
    guard = DivergenceGuard(3.0, 10)
    losses = [2.0 - 0.015 * i for i in range(100)] + [20.0] * 40  # 1.1 -> 23-ish, as measured on a GPU
    hit = feed(guard, losses)
    assert hit is not None
    step, why = hit
    assert guard.first_bad == 101  # the first raw loss above the line, not where the smoothed one crossed it
    assert step >= 101 + 9 and "since update 101" in why


def test_the_guard_resumes_exactly():
    a = DivergenceGuard(3.0, 10)
    losses = [2.0 - 0.015 * i for i in range(60)] + [9.0] * 3
    feed(a, losses)
    b = DivergenceGuard(3.0, 10, a.state())
    more = [9.0] * 20
    assert feed(a, more, 64) == feed(b, more, 64)


def validations(curve, best_by="recall", early_stop=None, state=None):
    p = Progress(best_by, early_stop, state)
    return p, [p.update(Validation(step, *values)) for step, values in curve]


# (val_loss, recall, token_accuracy) per validation: fact data, where the validation loss of facts never
# seen rises exactly while the trained facts go in
FACT_RUN = [(100, (1.2, 0.00, 0.90)), (200, (1.0, 0.02, 0.93)), (300, (1.1, 0.20, 0.96)),
            (400, (1.3, 0.55, 0.98)), (500, (1.5, 0.90, 0.995)), (600, (1.6, 0.88, 0.996))]


def test_best_by_recall_keeps_the_adapter_that_knows_most():
    progress, verdicts = validations(FACT_RUN)
    assert progress.best_step == 500
    assert [v.is_best for v in verdicts] == [True, True, True, True, True, False]


def test_best_by_val_loss_keeps_the_lowest_validation_loss():
    progress, _ = validations(FACT_RUN, "val_loss")
    assert progress.best_step == 200


def test_token_accuracy_breaks_recall_ties():
    progress, verdicts = validations([(1, (None, 0.0, 0.50)), (2, (None, 0.0, 0.70)), (3, (None, 0.0, 0.60))])
    assert progress.best_step == 2 and [v.is_best for v in verdicts] == [True, True, False]


def test_early_stop_on_recall_after_patience_validations_without_progress():
    curve = [(1, (None, 0.1, 0.8)), (2, (None, 0.5, 0.9)), (3, (None, 0.5, 0.9)), (4, (None, 0.49, 0.9)),
             (5, (None, 0.6, 0.95))]
    _, verdicts = validations(curve, early_stop={"metric": "recall", "patience": 2, "min_delta": 0.0})
    assert [v.stop is not None for v in verdicts] == [False, False, False, True, False]
    assert "patience 2" in verdicts[3].stop


def test_early_stop_on_val_loss_counts_min_delta():
    curve = [(1, (2.0, None, None)), (2, (1.5, None, None)), (3, (1.49, None, None)), (4, (1.48, None, None))]
    _, verdicts = validations(curve, "val_loss", {"metric": "val_loss", "patience": 2, "min_delta": 0.05})
    assert [v.stop is not None for v in verdicts] == [False, False, False, True]


def test_plateau_advice_once_per_plateau():
    curve = [(i, (None, 0.4, 0.9)) for i in range(1, 7)] + [(7, (None, 0.6, 0.95))] + \
            [(i, (None, 0.6, 0.95)) for i in range(8, 12)]
    _, verdicts = validations(curve)
    told = [i + 1 for i, v in enumerate(verdicts) for code, _ in v.advice if code == "plateau"]
    assert told == [4, 10]  # three validations without progress, then again only after progress


def test_no_overfitting_advice_while_recall_still_rises():
    """The advice the GPU runs of 2026-11-30 gave wrongly: validation loss rose for many validations while
    recall climbed, with one validation's recall a little under the one before."""
    curve = [(s, (1.0 + 0.05 * i, r, 0.9 + 0.005 * i)) for i, (s, r) in
             enumerate([(1, 0.1), (2, 0.2), (3, 0.35), (4, 0.33), (5, 0.5), (6, 0.48), (7, 0.7), (8, 0.9)])]
    _, verdicts = validations(curve)
    assert not [code for v in verdicts for code, _ in v.advice]


def test_overfitting_advice_when_validation_rises_and_recall_is_flat():
    curve = [(1, (1.0, 0.5, 0.95)), (2, (1.1, 0.5, 0.95)), (3, (1.2, 0.5, 0.95)), (4, (1.3, 0.5, 0.95))]
    _, verdicts = validations(curve)
    assert [code for code, _ in verdicts[-1].advice] == ["plateau", "overfitting"]


def test_progress_resumes_exactly():
    first, _ = validations(FACT_RUN[:3], early_stop={"metric": "recall", "patience": 2, "min_delta": 0.0})
    again = Progress("recall", {"metric": "recall", "patience": 2, "min_delta": 0.0}, first.state())
    whole, verdicts = validations(FACT_RUN, early_stop={"metric": "recall", "patience": 2, "min_delta": 0.0})
    rest = [again.update(Validation(step, *values)) for step, values in FACT_RUN[3:]]
    assert rest == verdicts[3:] and again.state() == whole.state()
