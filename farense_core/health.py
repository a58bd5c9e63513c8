"""Is a run going well? The divergence guard, the best adapter, early stopping and advice.

Pure Python (no mlx): the trainer feeds it each update's loss and each validation's figures;
its state is a plain dict stored in every checkpoint, so a resumed run decides exactly as an
uninterrupted one.

Why recall and not validation loss picks the adapter on fact data: the validation set holds
facts the model never saw, so its loss rises exactly while the trained facts are being learned
(measured: the adapter with the best validation loss answered 12.5% of its training questions,
the last one 63%). Recall (``engine.recall``) measures the trained facts themselves.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Optional

SMOOTHING = 0.1        # weight of the newest loss in the smoothed loss (about a 10-update window)
DIVERGENCE_MARGIN = 1.0  # nats: a tiny loss doubling (0.02 -> 0.04) is not a divergence
PLATEAU_VALIDATIONS = 3
RISING_VALIDATIONS = 3
PLATEAU_DELTA = 0.005   # recall or token accuracy must gain this much to count as progress


class DivergenceGuard:
    """Non-finite loss, or a smoothed loss above ``factor`` x its lowest (and 1 nat above it) for
    ``patience`` updates in a row, is a divergence. ``first_bad`` is the first update of the run of
    raw losses above that line which led there (the smoothed loss lags behind the raw one):
    checkpoints from then on hold a diverging model."""

    RECENT = 64  # raw losses kept to find where the rise began

    def __init__(self, factor: float, patience: int, state: Optional[dict] = None):
        self.factor, self.patience = factor, patience
        self.smoothed: Optional[float] = None
        self.lowest = math.inf
        self.streak = 0
        self.first_bad = 0
        self.recent: deque = deque(maxlen=self.RECENT)
        if state:
            self.smoothed, self.lowest = state["smoothed"], state["lowest"]
            self.streak, self.first_bad = state["streak"], state["first_bad"]
            self.recent.extend(tuple(r) for r in state["recent"])

    def state(self) -> dict:
        return {"smoothed": self.smoothed, "lowest": self.lowest, "streak": self.streak,
                "first_bad": self.first_bad, "recent": [list(r) for r in self.recent]}

    def _line(self) -> float:
        return max(self.factor * self.lowest, self.lowest + DIVERGENCE_MARGIN)

    def _rise_began(self, step: int) -> int:
        first = step
        for s, loss in reversed(self.recent):
            if not loss > self._line():
                break
            first = s
        return first

    def update(self, step: int, loss: float) -> Optional[str]:
        """None while healthy; a sentence saying what happened once the run has diverged."""
        if not math.isfinite(loss):
            self.first_bad = self.first_bad if self.streak else self._rise_began(step)
            return f"the loss became {loss} at update {step}"
        self.recent.append((step, loss))
        self.smoothed = loss if self.smoothed is None else (1 - SMOOTHING) * self.smoothed + SMOOTHING * loss
        self.lowest = min(self.lowest, self.smoothed)
        if self.smoothed > self._line():
            if self.streak == 0:
                self.first_bad = self._rise_began(step)
            self.streak += 1
        else:
            self.streak = 0
        if self.streak >= self.patience:
            return (f"the smoothed loss rose to {self.smoothed:.3g}, more than {self.factor:g} times its lowest "
                    f"({self.lowest:.3g}), and stayed there for {self.streak} updates (since update {self.first_bad})")
        return None


@dataclass
class Validation:
    step: int
    val_loss: Optional[float] = None
    recall: Optional[float] = None
    token_accuracy: Optional[float] = None


@dataclass
class Verdict:
    is_best: bool = False
    stop: Optional[str] = None            # why to stop early, or None
    advice: tuple = ()                    # (code, message) pairs


@dataclass
class _State:
    best_step: int = 0
    best_recall: float = -1.0
    best_token_accuracy: float = -1.0
    best_val_loss: float = math.inf
    # early stop's own bests (its metric may differ from best_by)
    es_recall: float = -1.0
    es_token_accuracy: float = -1.0
    es_val_loss: float = math.inf
    es_stale: int = 0
    plateau_recall: float = -1.0
    plateau_token_accuracy: float = -1.0
    plateau_stale: int = 0
    plateau_told: bool = False
    rising: int = 0
    overfit_told: bool = False
    last_val_loss: Optional[float] = None


class Progress:
    """The validations of a run so far: which adapter is best, whether to stop early, advice."""

    def __init__(self, best_by: str, early_stop: Optional[dict], state: Optional[dict] = None):
        self.best_by, self.early_stop = best_by, early_stop
        self.s = _State(**state) if state else _State()

    def state(self) -> dict:
        return asdict(self.s)

    @property
    def best_step(self) -> int:
        return self.s.best_step

    def update(self, v: Validation) -> Verdict:
        s, out = self.s, Verdict()
        # the best adapter: recall first, token accuracy breaks ties (early on, recall is 0 throughout)
        if self.best_by == "recall" and v.recall is not None:
            better = (v.recall, v.token_accuracy) > (s.best_recall, s.best_token_accuracy)
        else:
            better = v.val_loss is not None and v.val_loss < s.best_val_loss
        if better:
            s.best_step = v.step
        if v.recall is not None and (v.recall, v.token_accuracy) > (s.best_recall, s.best_token_accuracy):
            s.best_recall, s.best_token_accuracy = v.recall, v.token_accuracy
        if v.val_loss is not None:
            s.best_val_loss = min(s.best_val_loss, v.val_loss)
        out.is_best = better
        out.stop = self._early_stop(v)
        out.advice = tuple(self._advice(v))
        return out

    def _early_stop(self, v: Validation) -> Optional[str]:
        es, s = self.early_stop, self.s
        if not es:
            return None
        delta = es["min_delta"]
        if es["metric"] == "recall":
            if v.recall is None:
                return None
            improved = v.recall > s.es_recall + delta or v.token_accuracy > s.es_token_accuracy + delta
            s.es_recall, s.es_token_accuracy = max(s.es_recall, v.recall), max(s.es_token_accuracy, v.token_accuracy)
            what = f"recall ({v.recall:.1%}) and token accuracy ({v.token_accuracy:.1%})"
        else:
            if v.val_loss is None:
                return None
            improved = v.val_loss < s.es_val_loss - delta
            s.es_val_loss = min(s.es_val_loss, v.val_loss)
            what = f"validation loss ({v.val_loss:.4f})"
        s.es_stale = 0 if improved else s.es_stale + 1
        if s.es_stale >= es["patience"]:
            return (f"{what} did not improve by more than {delta:g} in {s.es_stale} validations "
                    f"(early_stop patience {es['patience']})")
        return None

    def _advice(self, v: Validation):
        s = self.s
        if v.recall is not None:
            progressed = (v.recall > s.plateau_recall + PLATEAU_DELTA
                          or v.token_accuracy > s.plateau_token_accuracy + PLATEAU_DELTA)
            s.plateau_recall = max(s.plateau_recall, v.recall)
            s.plateau_token_accuracy = max(s.plateau_token_accuracy, v.token_accuracy)
            s.plateau_stale, s.plateau_told = (0, False) if progressed else (s.plateau_stale + 1, s.plateau_told)
            if s.plateau_stale >= PLATEAU_VALIDATIONS and v.recall < 1.0 and not s.plateau_told:
                s.plateau_told = True
                yield ("plateau",
                       f"Recall has not improved for {s.plateau_stale} validations ({v.recall:.1%} now): more of the "
                       f"same training will not teach more facts; raise learning_rate, lora rank or num_layers, "
                       f"or give each fact more phrasings.")
        if v.val_loss is not None:
            rose = s.last_val_loss is not None and v.val_loss > s.last_val_loss
            s.rising = s.rising + 1 if rose else 0
            s.last_val_loss = v.val_loss
            flat = v.recall is None or s.plateau_stale >= RISING_VALIDATIONS  # no progress over the same span
            if s.rising >= RISING_VALIDATIONS and flat and not s.overfit_told:
                s.overfit_told = True
                yield ("overfitting",
                       f"Validation loss has risen for {s.rising} validations while recall is flat: training longer "
                       f"only overfits. The best adapter by {self.best_by} is kept in adapters/; set early_stop "
                       f"to end such runs by themselves.")
            elif s.rising == 0:
                s.overfit_told = False
