import math
import random

import pytest

from farense_core import batching
from farense_core.config import validate
from farense_core.schedule import learning_rate_at


def cfg(**kw):
    return validate({"model": "m", "learning_rate": 1e-3, **kw})[0]


def test_warmup_is_linear_in_updates_then_constant():
    c = cfg(warmup_steps=4)
    assert [learning_rate_at(u, c, 10) for u in range(1, 7)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_cosine_after_warmup_ends_at_min_ratio():
    c = cfg(warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    values = [learning_rate_at(u, c, 12) for u in range(1, 13)]
    assert values[1] == pytest.approx(1e-3)  # end of warmup: the peak
    assert values[-1] == pytest.approx(1e-4)  # last update: the floor
    mid = learning_rate_at(7, c, 12)  # halfway through the decay
    assert mid == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(values[1:], values[2:]))


def test_linear_decay():
    c = cfg(lr_schedule="linear", min_lr_ratio=0.0)
    assert [learning_rate_at(u, c, 4) for u in (1, 2, 4)] == pytest.approx([7.5e-4, 5e-4, 0.0])


def test_mlx_lm_schedule_mapping_keeps_its_meaning():
    c = cfg(lr_schedule={"name": "cosine_decay", "arguments": [1e-3, 10, 0.0], "warmup": 2, "warmup_init": 0.0})
    # mlx-lm: linear warmup 0 -> 1e-3 over steps 0..2, then cosine from step 3 on (step = update - 1)
    assert learning_rate_at(1, c, 20) == pytest.approx(0.0)
    assert learning_rate_at(3, c, 20) == pytest.approx(1e-3)
    assert learning_rate_at(4, c, 20) == pytest.approx(1e-3)
    assert learning_rate_at(9, c, 20) == pytest.approx(0.5e-3)


def test_buckets_group_similar_lengths_and_keep_the_last_small_batch():
    lengths = [5, 100, 7, 98, 6, 101, 99, 8, 300]
    batches = batching.bucket_batches(lengths, 2)
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert [len(b) for b in batches] == [2, 2, 2, 2, 1]
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spans) <= 3


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = batching.epoch_order(50, seed=1, epoch=0)
    assert a == batching.epoch_order(50, seed=1, epoch=0)
    assert a != batching.epoch_order(50, seed=1, epoch=1)
    assert sorted(a) == list(range(50))


def test_bucketing_beats_random_batches_on_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(20, 40), rng.randint(200, 400)]) for _ in range(400)]
    bucketed = batching.bucket_batches(lengths, 4)
    idx = list(range(400))
    rng.shuffle(idx)
    random_batches = [idx[i:i + 4] for i in range(0, 400, 4)]
    eff_b = batching.padding_efficiency(lengths, bucketed, 512)
    eff_r = batching.padding_efficiency(lengths, random_batches, 512)
    assert eff_b > 0.95 > 0.75 > eff_r


def test_remainder_micro_batches_make_an_update():
    lengths = [5, 9, 1, 7, 3, 8, 2, 6, 4, 10]
    updates = batching.bucket_updates(lengths, batch_size=2, accumulation=2)
    assert [[len(mb) for mb in u] for u in updates] == [[2, 2], [2, 2], [2]]  # 10 = 4 + 4 + 2, nothing dropped
    assert sorted(i for u in updates for mb in u for i in mb) == list(range(10))


def test_accumulation_changes_memory_not_the_examples_of_an_update():
    rng = __import__("random").Random(3)
    lengths = [rng.randint(5, 300) for _ in range(101)]
    whole = batching.bucket_updates(lengths, batch_size=32, accumulation=1)
    split = batching.bucket_updates(lengths, batch_size=8, accumulation=4)
    assert [sorted(mb[0]) for mb in whole] == [sorted(i for mb in u for i in mb) for u in split]
    assert all(len(mb) <= 8 for u in split for mb in u)
    for seed, epoch in ((0, 0), (5, 2)):  # the same updates in the same order, epoch after epoch
        a = [mb for mb, _ in batching.epoch_micro_batches(whole, seed, epoch)]
        b = batching.epoch_micro_batches(split, seed, epoch)
        ends = [i for i, (_, last) in enumerate(b) if last]
        starts = [0] + [e + 1 for e in ends[:-1]]
        assert [sorted(i for mb, _ in b[s:e + 1] for i in mb) for s, e in zip(starts, ends)] == [sorted(x) for x in a]


def test_updates_planned_counts_buckets_of_the_effective_batch():
    assert batching.updates_planned(cfg(batch_size=8, grad_accumulation_steps=4, epochs=12), 11802) == (369, 4428)
    assert batching.updates_planned(cfg(batch_size=2, grad_accumulation_steps=2, epochs=1), 10) == (3, 3)
    assert batching.updates_planned(cfg(batch_size=2, grad_accumulation_steps=2, iters=7), 10) == (3, 7)


def test_a_position_in_updates_is_the_same_for_any_split_of_the_batch():
    from farense_core.batching import bucket_updates, epoch_micro_batches, micro_batches_before, updates_before

    lengths = [5, 9, 3, 7, 7, 2, 11, 4, 6, 8, 1]
    coarse, fine = bucket_updates(lengths, 4, 1), bucket_updates(lengths, 2, 2)
    assert [sum(u, []) for u in coarse] == [sum(u, []) for u in fine]  # the same updates, split finer
    for epoch in (0, 3):
        for n in range(len(coarse) + 1):
            at_coarse = micro_batches_before(coarse, 7, epoch, n)
            at_fine = micro_batches_before(fine, 7, epoch, n)
            assert updates_before(coarse, 7, epoch, at_coarse) == n == updates_before(fine, 7, epoch, at_fine)
            # resuming at the fine position trains what the coarse run trains next
            rest_coarse = sum((mb for mb, _ in epoch_micro_batches(coarse, 7, epoch)[at_coarse:]), [])
            rest_fine = sum((mb for mb, _ in epoch_micro_batches(fine, 7, epoch)[at_fine:]), [])
            assert rest_coarse == rest_fine
    assert micro_batches_before(fine, 7, 0, len(fine)) == sum(len(u) for u in fine)


def test_budget_batches_hold_no_more_positions_than_the_budget_and_lose_no_row():
    rng = random.Random(3)
    lengths = [rng.randint(5, 700) for _ in range(200)]
    batches = batching.budget_batches(lengths, batch_size=8, max_tokens=8 * 64)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) <= 8
        widest = max(lengths[i] for i in b)
        assert len(b) * widest <= 8 * 64 or len(b) == 1  # a row over the budget goes alone
    assert any(len(b) == 8 for b in batches) and any(len(b) == 1 for b in batches)
    # without a budget: batches of batch_size by length, as before
    assert batching.budget_batches(lengths, 8) == batching.bucket_batches(lengths, 8)
