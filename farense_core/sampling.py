"""How a reply is sampled: the settings, their defaults and their checks, in one place for the
engine's chat, the Chat tab's fields and the chat command's flags.

Why these defaults: small instruction models fall into loops under greedy decoding (the user's own
experience), so the default samples (temperature 0.7) from a trimmed distribution (top-p 0.9 drops
the long tail; min-p 0.05 drops tokens under 5% of the top token's probability, which adapts to how
sure the model is) and penalises tokens repeated within the last 64 (penalty 1.1: enough to break
loops, mild enough not to garble names and scores that must repeat). ``temperature: 0`` is greedy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable


class SamplerError(ValueError):
    """One sentence: the setting, its value and what is allowed."""


@dataclass(frozen=True)
class SamplerField:
    name: str       # the protocol's field
    label: str      # for people (the Chat tab)
    flag: str       # the chat command's option
    kind: type      # float or int
    default: Any
    allowed: str    # what the check accepts, in words
    ok: Callable[[Any], bool]
    help: str


FIELDS = (
    SamplerField("temperature", "temperature", "--temp", float, 0.7, "0 (greedy) or more", lambda v: v >= 0,
                 "sampling temperature; 0 is greedy"),
    SamplerField("top_p", "top-p", "--top-p", float, 0.9, "between 0 and 1 (0 or 1 turns it off)",
                 lambda v: 0 <= v <= 1, "nucleus sampling threshold"),
    SamplerField("min_p", "min-p", "--min-p", float, 0.05, "at least 0 and below 1 (0 turns it off)",
                 lambda v: 0 <= v < 1, "drop tokens below this share of the top token"),
    SamplerField("repetition_penalty", "repetition penalty", "--repetition-penalty", float, 1.1,
                 "above 0 (1 turns it off)", lambda v: v > 0, "penalty for recently used tokens; 1 is off"),
    SamplerField("repetition_context_size", "repetition context", "--repetition-context", int, 64, "at least 1",
                 lambda v: v >= 1, "tokens the repetition penalty looks back over"),
    SamplerField("max_tokens", "max tokens", "--max-tokens", int, 256, "at least 1", lambda v: v >= 1,
                 "longest reply in tokens"),
)
BY_NAME = {f.name: f for f in FIELDS}
DEFAULTS = {f.name: f.default for f in FIELDS}


def check(name: str, value: Any) -> Any:
    """The value as its kind, or ``SamplerError``."""
    f = BY_NAME[name]
    try:
        if isinstance(value, bool) or (f.kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        typed = f.kind(value)
    except (TypeError, ValueError):
        raise SamplerError(f"{f.label} is {value!r}, but it must be {f.allowed}.") from None
    if not f.ok(typed):
        raise SamplerError(f"{f.label} is {value!r}, but it must be {f.allowed}.")
    return typed


def check_all(values: dict) -> dict:
    """Every sampler setting of ``values`` checked (others are left as they are)."""
    return {k: check(k, v) if k in BY_NAME else v for k, v in values.items()}


def comparison_seed() -> int:
    """One seed for both sides of a comparison, so base and adapter sample alike."""
    return random.randrange(2**31)
