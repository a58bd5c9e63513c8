"""The frozen-block cache (engine/frozen.py): later epochs start their steps above the frozen blocks, and
train what a run without the cache trains; a resumed run stays bit-identical."""

from __future__ import annotations

import pytest

from enginetools import (adapter_arrays, assert_adapters_close, assert_bit_identical, base_config, train_in_process,
                         train_stopped_at)
from farense_core import protocol as P


def logs(events) -> list[str]:
    return [e.message for e in events if isinstance(e, P.Log) and e.message.startswith("Frozen-block cache")]


def test_the_decision_in_words():
    from engine.frozen import decide

    assert decide("off", 2, True, 10, 100) == (False, "off (frozen_cache: off)")
    assert decide("auto", 0, True, 10, 100)[0] is False
    assert "once" in decide("auto", 2, False, 10, 100)[1]
    over = decide("auto", 2, True, 30, 100)
    assert over[0] is False and "frozen_cache: on forces it" in over[1]
    assert decide("on", 2, True, 30, 100)[0] is True
    assert decide("auto", 2, True, 25, 100)[0] is True


@pytest.mark.slow
def test_later_epochs_start_above_the_frozen_blocks_and_train_the_same_adapter(tiny_model, tiny_data, tmp_path):
    # 3 epochs of LoRA on the top 2 of 4 blocks: the first epoch computes every micro-batch's state, the
    # other two take it from the cache
    common = dict(epochs=3, iters=None, steps_per_eval=1000, save_every=1000, eval_samples=0)
    done, events = train_in_process(base_config(tiny_model, tiny_data, **common), tmp_path / "cached")
    data = next(e for e in events if isinstance(e, P.Data))
    cache = done.summary["frozen_cache"]
    assert cache["blocks"] == 2 and cache["bytes"] > 0
    assert cache["misses"] == data.batches_per_epoch and cache["hits"] == 2 * data.batches_per_epoch
    assert logs(events) and logs(events)[0].startswith("Frozen-block cache on: the 2 frozen blocks")

    off, off_events = train_in_process(base_config(tiny_model, tiny_data, frozen_cache="off", **common),
                                       tmp_path / "plain")
    assert off.summary["frozen_cache"] is None and logs(off_events) == ["Frozen-block cache off (frozen_cache: off)."]
    assert [s.loss for s in events if isinstance(s, P.Step)] == pytest.approx(
        [s.loss for s in off_events if isinstance(s, P.Step)], rel=1e-5)
    assert_adapters_close(tmp_path / "cached" / "final" / "adapters.safetensors",
                          tmp_path / "plain" / "final" / "adapters.safetensors", 1e-5)


@pytest.mark.slow
def test_no_cache_where_it_cannot_pay(tiny_model, tiny_data, tmp_path):
    one_epoch, events = train_in_process(base_config(tiny_model, tiny_data, epochs=1, iters=None, eval_samples=0),
                                         tmp_path / "one")
    assert one_epoch.summary["frozen_cache"] is None
    assert logs(events) == ["Frozen-block cache off: the run sees each micro-batch once."]
    every, events = train_in_process(base_config(tiny_model, tiny_data, num_layers=-1, eval_samples=0),
                                     tmp_path / "all")
    assert every.summary["frozen_cache"] is None and "every block is trained" in logs(events)[0]


@pytest.mark.slow
def test_a_run_resumed_in_a_later_epoch_is_bit_identical_with_the_cache(tiny_model, tiny_data, tmp_path):
    cfg = base_config(tiny_model, tiny_data, epochs=3, iters=None, save_every=2, eval_samples=0)
    whole, _ = train_in_process(cfg, tmp_path / "whole")
    assert whole.summary["frozen_cache"]["hits"] > 0
    per_epoch = whole.summary["total_updates"] // 3
    # inside the second epoch: the resumed process starts with an empty cache
    train_stopped_at(cfg, tmp_path / "resumed", per_epoch + 2)
    resumed, _ = train_in_process(cfg, tmp_path / "resumed", resume=True)
    assert resumed.status == "completed" and resumed.summary["frozen_cache"]["misses"] > 0
    assert_bit_identical(adapter_arrays(tmp_path / "whole" / "final" / "adapters.safetensors"),
                         adapter_arrays(tmp_path / "resumed" / "final" / "adapters.safetensors"))
