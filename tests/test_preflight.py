"""Preflight: every check's pass/warn/fail paths on faked figures, the tier table, the estimate-driven
recommendation, the probe (its selection logic on a fake runner, then real updates on the tiny
model), the handler through a real engine subprocess, the CLI, and that the recommended config trains."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from farense_core import config as C
from engine.preflight import checks as CK
from engine.preflight import estimate as E
from engine.preflight import hardware as HW
from engine.preflight import probe as PR
from engine.preflight import recommend as RC
from engine.preflight import run as RUN
from farense_core import protocol as P
from engine.server import Context

GB = E.GB
MB = E.MB


# ------------------------------------------------------------------ fakes


def machine(available_gb: float, total_gb: float = 0, *, os_name="Linux", machine_="x86_64", chip="Test CPU",
            apple=False, cores=8, rosetta=False, working_set_gb=0.0) -> HW.Hardware:
    return HW.Hardware(
        os_name=os_name, os_release="1.0", machine=machine_, chip=chip, apple_silicon=apple,
        physical_cores=cores, logical_cores=cores, usable_cores=cores,
        memory_total=int((total_gb or available_gb * 1.5) * GB), memory_available=int(available_gb * GB),
        metal_working_set=int(working_set_gb * GB) or None, rosetta=rosetta,
    )


def cpu_device(blas="openblas", openblas_path="/usr/lib/libblas.so.3", working="float32", rates=None,
               other=None) -> HW.DeviceInfo:
    return HW.DeviceInfo(backend="cpu", name="Test CPU", blas=blas, openblas_path=openblas_path, working=working,
                         rates={"float32": 200.0} if rates is None else rates, other_blas=other)


def metal_device(working="4-bit") -> HW.DeviceInfo:
    return HW.DeviceInfo(backend="metal gpu", name="Apple M1", working=working,
                         rates={"float32": 2000.0, working: 1500.0})


def llama_info(*, params: float, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int,
               vocab: int, bits=None, dtype="bfloat16") -> E.ModelInfo:
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    block = [("self_attn.q_proj", hidden, hidden), ("self_attn.k_proj", hidden, kv), ("self_attn.v_proj", hidden, kv),
             ("self_attn.o_proj", hidden, hidden), ("mlp.gate_proj", hidden, intermediate),
             ("mlp.up_proj", hidden, intermediate), ("mlp.down_proj", intermediate, hidden)]
    loaded = int(params * (bits / 8 + 0.06) if bits else params * E.DTYPE_BYTES[dtype])
    return E.ModelInfo(path="fake", parameters=int(params), layers=layers, hidden=hidden, intermediate=intermediate,
                        heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab, loaded_bytes=loaded,
                        disk_bytes=loaded, quantization={"bits": bits, "group_size": 64} if bits else None,
                        float_dtype=dtype, linears=[list(block) for _ in range(layers)])


def mistral_7b_4bit() -> E.ModelInfo:
    return llama_info(params=7.24e9, layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=32000,
                      bits=4)


def smollm2_135m() -> E.ModelInfo:
    return llama_info(params=134.5e6, layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, vocab=49152,
                      dtype="float32")


def config(**overrides) -> dict:
    cfg, _ = C.validate({"model": "fake", **overrides})
    return cfg


def statuses(checks) -> dict:
    return {c.name: c.status for c in checks}


# -------------------------------------------------------------- the tiers


@pytest.mark.parametrize("available_gb, tier, batch, accum, seq, lr", [
    (3.0, "<6 GB", 1, 8, 128, 1e-4),
    (5.9, "<6 GB", 1, 8, 128, 1e-4),
    (6.0, "6-8 GB", 1, 4, 256, 2e-4),
    (7.3, "6-8 GB", 1, 4, 256, 2e-4),   # the seeds' own example: 7.3 GB available -> the 6-8 GB config
    (8.0, "8 GB", 2, 2, 512, 3e-4),
    (15.9, "8 GB", 2, 2, 512, 3e-4),
    (16.0, "16 GB", 4, 2, 512, 2e-4),   # the user's M1 16 GB config (seed 001)
    (31.9, "16 GB", 4, 2, 512, 2e-4),
    (32.0, "32 GB+", 8, 1, 512, 5e-4),
    (128.0, "32 GB+", 8, 1, 512, 5e-4),
])
def test_tier_table(available_gb, tier, batch, accum, seq, lr):
    t = RC.tier_for(int(available_gb * GB))
    assert (t.name, t.batch_size, t.grad_accumulation_steps, t.max_seq_length, t.learning_rate) == (
        tier, batch, accum, seq, lr)


def test_recommendation_starts_from_the_tier_and_says_why():
    # a small model on a roomy GPU: nothing to adjust, the tier's values stand
    rec = RC.recommend(config(num_layers=16), {}, machine(20), metal_device("float32"), smollm2_135m(), "m")
    cfg = rec.config
    assert rec.tier == "16 GB"
    assert (cfg["batch_size"], cfg["grad_accumulation_steps"], cfg["max_seq_length"], cfg["learning_rate"]) == (
        4, 2, 512, 2e-4)
    assert cfg["base_dtype"] == "auto" and cfg["epochs"] == 3.0
    assert "16 GB tier" in rec.reasons[0]
    C.validate(cfg)  # complete and valid as it is


# -------------------------------------------------------------- the checks


def test_python_check_paths():
    assert CK.check_python((3, 11, 7))[0].status == "pass"
    warn = CK.check_python((3, 15, 0))[0]
    assert warn.status == "warn" and warn.fix
    fail = CK.check_python((3, 9, 18))[0]
    assert fail.status == "fail" and "3.10" in fail.detail and fail.fix


def test_package_checks_name_versions_and_what_is_missing():
    versions = {"mlx": "0.32.4", "mlx-lm": "0.20.0", "textual": "8.0", "plotext": "5.3", "psutil": "7.0",
                "transformers": None}
    checks = CK.check_packages(versions.get, requirements={"mlx": "0.29", "mlx-lm": "0.28", "psutil": "5.9"})
    by_name = {c.name: c for c in checks}
    assert by_name["mlx"].status == "pass" and "0.32.4" in by_name["mlx"].detail
    assert by_name["mlx-lm"].status == "warn" and "0.28" in by_name["mlx-lm"].detail
    assert by_name["transformers"].status == "fail" and "pip install" in by_name["transformers"].fix
    # and the real environment has everything
    assert all(c.status == "pass" for c in CK.check_packages()), [c.detail for c in CK.check_packages()]


def test_hardware_checks_on_faked_machines():
    mac = CK.check_hardware(machine(12, 16, os_name="macOS", machine_="arm64", chip="Apple M1 Pro", apple=True),
                            "metal gpu")
    assert all(c.status == "pass" for c in mac)
    assert "Apple M1 Pro (Apple Silicon)" in next(c for c in mac if c.name == "chip").detail
    assert ("(the 8 GB tier: the presets for machines of at least 8 GB start the recommendation)"
            in next(c for c in mac if c.name == "memory").detail)  # why a 16 GB Mac is "8 GB": what it has free

    small = statuses(CK.check_hardware(machine(5), "cpu"))
    assert small["memory"] == "warn"
    tiny = statuses(CK.check_hardware(machine(1.5, 4, cores=2), "cpu"))
    assert tiny["memory"] == "fail" and tiny["cores"] == "warn"
    rosetta = statuses(CK.check_hardware(machine(12, os_name="macOS", rosetta=True), "cpu"))
    assert rosetta["os"] == "fail"
    # Metal's working set caps what a run may use
    assert machine(30, working_set_gb=10).memory_budget == 10 * GB


def test_device_checks_blas_and_working_dtype():
    hw = machine(16)
    gpu = {c.name: c for c in CK.check_device(metal_device(), machine(16, os_name="macOS"))}
    assert gpu["backend"].status == "pass" and "blas" not in gpu

    loaded = {c.name: c for c in CK.check_device(cpu_device(other={"blas": "reference", "float32": 5.0}), hw)}
    assert loaded["backend"].status == "warn"  # a CPU backend is slow, and preflight says so
    assert loaded["blas"].status == "pass" and "40x slower" in loaded["blas"].detail

    installed = {c.name: c for c in CK.check_device(
        cpu_device(blas="reference", rates={"float32": 5.0}, other={"float32": 200.0}), hw)}
    assert installed["blas"].status == "warn" and "LD_PRELOAD=/usr/lib/libblas.so.3" in installed["blas"].fix
    assert "40x faster" in installed["blas"].detail

    missing = {c.name: c for c in CK.check_device(cpu_device(blas="reference", openblas_path=None,
                                                             rates={"float32": 5.0}), hw)}
    assert missing["blas"].status == "warn" and E.OPENBLAS_INSTALL in missing["blas"].fix

    slow = {c.name: c for c in CK.check_device(
        cpu_device(working="bfloat16", rates={"float32": 200.0, "bfloat16": 5.0}), hw)}
    assert slow["matmul"].status == "warn" and "base_dtype: float32" in slow["matmul"].fix

    broken = {c.name: c for c in CK.check_device(cpu_device(rates={}), hw)}
    assert broken["matmul"].status == "fail" and broken["matmul"].fix


def test_matmul_rates_are_measured():
    assert HW.matmul_rate("float32", seconds=0.01, n=64) > 0
    assert HW.matmul_rate("4-bit", seconds=0.01, n=64, quantization={"group_size": 32}) > 0
    assert E.working_dtype("auto", {"bits": 4}, "bfloat16", on_cpu=True) == "float32"
    assert E.working_dtype("auto", {"bits": 4}, "bfloat16", on_cpu=False) == "4-bit"
    assert E.working_dtype("keep", None, "bfloat16", on_cpu=True) == "bfloat16"


def test_data_checks(tmp_path, tiny_data):
    from tiny_model import write_chat_data

    checks, files = CK.check_data_files(config(data=str(tiny_data)))
    by_name = {c.name: c for c in checks}
    assert by_name["train.jsonl"].status == "warn"  # 24 examples: it will overfit, and preflight says so
    assert by_name["valid.jsonl"].status == "pass" and by_name["valid.jsonl"].data["formats"] == {"chat": 8}
    assert len(files["train"].samples) == 24

    roomy = write_chat_data(tmp_path / "roomy", n_train=60)
    assert statuses(CK.check_data_files(config(data=str(roomy)))[0]) == {"train.jsonl": "pass", "valid.jsonl": "pass"}

    assert statuses(CK.check_data_files(config(data=str(tmp_path / "nowhere")))[0]) == {"folder": "fail"}

    (roomy / "valid.jsonl").unlink()
    with open(roomy / "train.jsonl", "a") as f:
        f.write("{not json\n")
    checks = {c.name: c for c in CK.check_data_files(config(data=str(roomy)))[0]}
    assert checks["valid.jsonl"].status == "warn"
    assert checks["train.jsonl"].status == "fail" and "train.jsonl:61:" in checks["train.jsonl"].detail

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "train.jsonl").write_text('{"text": "a"}\n{"prompt": "q", "completion": "a"}\n')
    checks = {c.name: c for c in CK.check_data_files(config(data=str(mixed)))[0]}
    assert checks["train.jsonl"].status == "fail" and "train.jsonl:2: is in completions format" in checks[
        "train.jsonl"].detail


def test_model_checks(tmp_path, tiny_model):
    checks, loaded = CK.check_model(config(num_layers=4), str(tiny_model))
    assert statuses(checks) == {"found": "pass", "loads": "pass"}
    model, tokenizer, info = loaded
    assert info.layers == 4 and info.parameters > 100_000 and info.quantization is None
    assert info.trainable_parameters(config(num_layers=4)) == sum(
        8 * (i + o) for block in info.linears for _, i, o in block)

    too_deep, _ = CK.check_model(config(num_layers=16), str(tiny_model))
    assert statuses(too_deep)["num_layers"] == "fail"

    assert statuses(CK.check_model(config(), str(tmp_path / "absent"))[0]) == {"found": "fail"}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    checks, loaded = CK.check_model(config(), str(broken))
    assert statuses(checks) == {"found": "pass", "loads": "fail"} and loaded is None


def test_a_missing_default_model_says_how_to_install_it(tmp_path, monkeypatch):
    from farense_core.models import resolve_model

    monkeypatch.setenv("FARENSE_TUI_HOME", str(tmp_path / "home"))
    checks, loaded = CK.check_model(config(), resolve_model(None))
    assert loaded is None and checks[0].status == "fail" and "farense-tui model default" in checks[0].fix


def test_token_length_checks_measure_truncation(tiny_model, tiny_data):
    from engine.model import load_model

    _, tokenizer = load_model(str(tiny_model))
    _, files = CK.check_data_files(config(data=str(tiny_data)))
    checks, lengths = CK.check_token_lengths(config(max_seq_length=512), files, tokenizer)
    assert statuses(checks) == {"train tokens": "pass", "valid tokens": "pass"}
    longest = max(lengths["train"])
    checks, _ = CK.check_token_lengths(config(max_seq_length=64), files, tokenizer)
    train = checks[0]
    assert train.status == "warn"
    assert train.data["truncated"] == sum(1 for n in lengths["train"] if n > 64)
    assert f"{train.data['truncated_share']:.0%}" in train.detail
    assert str(E._round_up(longest, 64)) in train.fix


def test_disk_checks(tmp_path):
    info, cfg = smollm2_135m(), config()
    need = E.estimate_disk(info, cfg, train_count=2000)
    # 500 updates: 5 periodic saves and one at the epoch's end, of which 3 are kept, plus one mid-write
    assert need["checkpoints_kept"] == cfg["keep_checkpoints"] + 1 == 4
    assert need["total"] == 4 * need["checkpoint"] + 2 * need["adapter"] + need["logs"]
    assert E.estimate_disk(info, config(save_every=10**6), train_count=2000)["checkpoints_kept"] == 1  # epoch end only
    assert E.estimate_disk(info, config(keep_checkpoints=0), train_count=2000)["checkpoints_kept"] == 6  # all kept
    assert CK.check_disk(cfg, tmp_path, info, 2000, free=100 * GB)[0].status == "pass"
    assert CK.check_disk(cfg, tmp_path, info, 2000, free=need["total"] + 10 * MB)[0].status == "warn"
    fail = CK.check_disk(cfg, tmp_path, info, 2000, free=need["total"] // 2)[0]
    assert fail.status == "fail" and fail.fix
    # the folder need not exist yet: the nearest existing parent is measured
    assert CK.check_disk(cfg, tmp_path / "a" / "b", info, 2000)[0].data["path"] == str(tmp_path.resolve())


def test_memory_checks():
    info, cfg = mistral_7b_4bit(), config(batch_size=4, max_seq_length=512)
    est = E.estimate_memory(info, cfg, "4-bit")
    assert est["weights"] == info.loaded_bytes
    assert CK.check_memory(cfg, info, "4-bit", machine(64))[0].status == "pass"
    warn = CK.check_memory(cfg, info, "4-bit", machine(est["total"] / GB / 0.9))[0]
    assert warn.status == "warn" and "20%" in warn.detail
    fail = CK.check_memory(cfg, info, "4-bit", machine(8))[0]
    assert fail.status == "fail" and "grad_checkpoint" in fail.fix
    # the parts move the right way
    assert E.estimate_memory(info, cfg, "float32")["weights"] == info.parameters * 4
    assert E.estimate_memory(info, cfg, "4-bit", batch=8)["activations"] > est["activations"]
    assert E.estimate_memory(info, dict(cfg, grad_checkpoint=True), "4-bit")["activations"] < est["activations"] / 4
    assert CK.check_memory(cfg, None, "4-bit", machine(8))[0].status == "warn"


def test_a_crashing_check_becomes_a_failed_check_and_an_error(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("metadata is unreadable")

    monkeypatch.setattr(RUN, "check_packages", boom)
    events = []
    report, _, _ = RUN.run_preflight({"model": str(tmp_path / "none")}, tmp_path / "out", emit=events.append,
                                    hardware=machine(16), device=cpu_device())
    crashed = [c for c in report["checks"] if c["name"] == "crashed"]
    assert crashed and crashed[0]["status"] == "fail" and "metadata is unreadable" in crashed[0]["detail"]
    errors = [e for e in events if isinstance(e, P.Error)]
    assert errors and "RuntimeError" in errors[0].traceback
    assert report["ok"] is False


# ---------------------------------------------------------- recommendation


def test_cpu_recommendation_trains_the_base_in_float32_and_says_why():
    rec = RC.recommend(config(), {}, machine(20), cpu_device(blas="reference", rates={"float32": 5.0}),
                       smollm2_135m(), "m")
    assert rec.config["base_dtype"] == "float32"
    why = next(r for r in rec.reasons if "float32" in r)
    assert "CPU backend" in why and E.OPENBLAS_INSTALL in why


def test_a_large_model_shrinks_batch_then_keeps_the_effective_batch():
    info = mistral_7b_4bit()
    rec = RC.recommend(config(), {}, machine(16), metal_device(), info, "m")
    cfg = rec.config
    assert cfg["base_dtype"] == "auto"  # QLoRA: the base stays 4-bit on the GPU
    assert cfg["batch_size"] < 4 and cfg["batch_size"] * cfg["grad_accumulation_steps"] == 8
    assert rec.estimate["total"] <= 0.8 * 16 * GB
    assert any("leave too little room" in r for r in rec.reasons)
    C.validate(cfg)


def test_a_float32_base_that_cannot_fit_stays_quantized_on_cpu():
    rec = RC.recommend(config(), {}, machine(12), cpu_device(), mistral_7b_4bit(), "m")
    assert rec.config["base_dtype"] == "keep"
    assert any("does not fit" in r for r in rec.reasons)


def test_sequence_length_follows_the_data_and_layers_follow_the_model():
    info = llama_info(params=1e6, layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=400,
                      dtype="float32")
    rec = RC.recommend(config(num_layers=16), {}, machine(20), cpu_device(), info, "m",
                       lengths={"train": [100, 900]}, train_count=2)
    assert rec.config["max_seq_length"] == 960 and rec.config["num_layers"] == 4
    assert any("900 tokens" in r for r in rec.reasons)


def test_large_models_get_a_smaller_learning_rate():
    info = llama_info(params=14e9, layers=40, hidden=5120, intermediate=13824, heads=40, kv_heads=40, vocab=32000,
                      bits=4)
    rec = RC.recommend(config(), {}, machine(64), metal_device(), info, "m")
    assert rec.config["learning_rate"] == RC.tier_for(64 * GB).learning_rate / 2


def test_the_users_schedule_settings_are_kept():
    rec = RC.recommend(config(iters=50, warmup_steps=7), {"iters": 50, "warmup_steps": 7}, machine(20),
                       cpu_device(), smollm2_135m(), "m", train_count=100)
    assert rec.config["iters"] == 50 and rec.config["epochs"] is None and rec.config["warmup_steps"] == 7
    C.validate(rec.config)


def test_a_recipe_keeps_its_learning_settings_and_only_memory_cuts_its_updates():
    """The measured Farense recipe: learning rate and updates of 32 examples stay; a small machine gets
    smaller micro-batches with more accumulation (the same updates), never another effective batch."""
    raw = {"fine_tune_type": "full", "num_layers": -1, "learning_rate": 3e-4, "batch_size": 32,
           "grad_accumulation_steps": 1, "max_seq_length": 384, "epochs": 12}
    for available in (5, 12, 64):
        rec = RC.recommend(config(**raw), raw, machine(available), cpu_device(), smollm2_135m(), "m", train_count=11802)
        cfg = rec.config
        assert cfg["learning_rate"] == 3e-4 and cfg["epochs"] == 12
        assert cfg["batch_size"] * cfg["grad_accumulation_steps"] == 32, available
        assert any("kept" in r for r in rec.reasons)
    small = RC.recommend(config(**raw), raw, machine(5), cpu_device(), smollm2_135m(), "m", train_count=11802)
    assert small.config["batch_size"] < 32
    # a config that sets nothing gets the tier's values
    plain = RC.recommend(config(), {}, machine(20), cpu_device(), smollm2_135m(), "m")
    assert plain.config["learning_rate"] == RC.tier_for(20 * GB).learning_rate


def test_full_fine_tuning_trains_a_float32_copy_of_a_quantized_base():
    assert E.working_dtype("auto", {"bits": 4}, "float16", on_cpu=False, full=True) == "float32"
    assert E.working_dtype("auto", {"bits": 4}, "float16", on_cpu=False) == "4-bit"


def chat_samples(facts: int, phrasings: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Pergunta {i} ({p})"},
                          {"role": "assistant", "content": f"Resposta {i}"}]}
            for i in range(facts) for p in range(phrasings)]


def fact_check(epochs: float, phrasings: int):
    from farense_core.datafiles import CheckResult

    found = CheckResult(path="train.jsonl", samples=chat_samples(100, phrasings))
    return CK.check_fact_exposure(config(epochs=epochs), {"train": found})[0]


def test_preflight_warns_when_training_is_too_short_to_learn_facts():
    shipped_before = fact_check(2, 1)  # the config that taught 3% of the facts
    assert shipped_before.status == "warn" and "2 times" in shipped_before.detail
    assert "Raise epochs to 36" in shipped_before.fix and "3 phrasings" in shipped_before.fix
    short = fact_check(8, 3)
    assert short.status == "warn" and "Raise epochs to 12" in short.fix and "phrasings" not in short.fix
    recipe = fact_check(12, 3)
    assert recipe.status == "pass" and recipe.data == {"phrasings": 3.0, "epochs": 12.0, "exposures": 36.0}
    from farense_core.datafiles import CheckResult

    assert CK.check_fact_exposure(config(), {"train": CheckResult(path="t", samples=[{"text": "x"}] * 5)}) == []


def test_the_time_check_says_how_long_the_run_takes_here():
    info = smollm2_135m()
    lengths = {"train": [122] * 11802}
    cfg = config(fine_tune_type="full", num_layers=-1, batch_size=8, grad_accumulation_steps=4, epochs=12)
    measured = CK.check_time(cfg, info, cpu_device(), "float32", lengths, measured_tps=97.0)[0]
    assert measured.status == "warn" and "from the probe's measured rate" in measured.detail
    assert measured.data["seconds"] == pytest.approx(12 * 122 * 11802 / 97.0, rel=1e-3)
    estimated = CK.check_time(cfg, info, metal_device("float32"), "float32", lengths)[0]
    assert estimated.status == "pass" and "matmul rate" in estimated.detail
    # full fine-tuning costs more per token than LoRA on the same blocks
    assert E.training_flops_per_token(info, cfg, 122) > E.training_flops_per_token(info, config(num_layers=-1), 122)


# ------------------------------------------------------------------ probe


def fake_runner(per_token=0.1 * MB, base=100 * MB, calls=None):
    calls = [] if calls is None else calls

    def run(batch, seq):
        calls.append((batch, seq))
        return int(base + batch * seq * per_token), 1000.0 * batch ** 0.5, 0.0

    return run, calls


def test_probe_skips_what_cannot_fit_and_picks_the_fastest_that_keeps_20_percent():
    run, calls = fake_runner()
    # 1 GB: the limit is 0.8 GB, less the 512 MB runtime: peaks up to ~307 MB fit (batch 4 x 512 does, 8 does not)
    events = []
    rows = PR.run_probe(run, [512, 256], [1, 2, 4, 8, 16], budget=GB, emit=events.append)
    assert calls == [(1, 512), (2, 512), (4, 512), (8, 512)]  # 16 skipped; 256 is only a fallback
    assert [r.ok for r in rows] == [True, True, True, False, False]
    assert "smaller setting" in rows[-1].note and len(events) == 5
    assert all(isinstance(e, P.ProbeResult) for e in events)
    best = PR.pick_probe(rows, 512)
    assert (best.batch_size, best.max_seq_length) == (4, 512)

    rec = RC.Recommendation(config(batch_size=1, grad_accumulation_steps=8, max_seq_length=512), "x")
    PR.apply_probe(rec, rows, train_tokens=10_000)
    assert (rec.config["batch_size"], rec.config["grad_accumulation_steps"], rec.source) == (4, 2, "probe")
    assert "fastest" in rec.reasons[-1] and "updates of 8 examples" in rec.reasons[-1]


def test_probe_never_changes_how_many_examples_an_update_holds():
    run, _ = fake_runner(per_token=0.001 * MB)
    rows = PR.run_probe(run, [256], [1, 2, 4, 8, 16], budget=64 * GB)
    assert PR.pick_probe(rows, 256).batch_size == 16  # the fastest of all
    # a recipe's update of 2 x 2 = 4 examples: batch 16 would be 4 times the update; batch 4 is the fastest that fits
    rec = RC.Recommendation(config(batch_size=2, grad_accumulation_steps=2, max_seq_length=256), "x")
    PR.apply_probe(rec, rows)
    assert (rec.config["batch_size"], rec.config["grad_accumulation_steps"]) == (4, 1)


def test_probe_falls_back_to_shorter_sequences_only_when_needed():
    run, calls = fake_runner(per_token=1 * MB)
    rows = PR.run_probe(run, [512, 256, 128], [1, 2], budget=GB)
    # 512 tokens: 612 MB + runtime is over the limit; 256 too (356 + 512 > 819); 128 fits at batch 1
    assert calls == [(1, 512), (1, 256), (1, 128), (2, 128)]
    best = PR.pick_probe(rows, 512)
    assert (best.batch_size, best.max_seq_length) == (1, 128)


def test_probe_predicts_skips_by_time_and_stops():
    run, calls = fake_runner()
    # an estimate that is right for batch 1 and 2 and far over the limit for 4
    estimate = lambda b, s: int(E.RUNTIME_BYTES + 100 * MB + b * s * 0.1 * MB) if b < 4 else 10 * GB  # noqa: E731
    rows = PR.run_probe(run, [512], [1, 2, 4], budget=GB, predict=estimate)
    assert calls == [(1, 512), (2, 512)] and "predicted" in rows[2].note  # batch 4 never ran

    run, calls = fake_runner()
    rows = PR.run_probe(run, [512], [1, 2, 4], budget=100 * GB, time_budget=0.0)
    assert calls == [(1, 512)] and "budget" in rows[1].note

    stop = threading.Event()
    stop.set()
    run, calls = fake_runner()
    rows = PR.run_probe(run, [512], [1, 2], budget=100 * GB, stop=stop)
    assert calls == [] and all("stop" in r.note for r in rows)


def test_probe_candidates():
    assert PR.probe_candidates(512, longest=300) == ([512, 256, 128, 64], [1, 2, 4, 8, 16])
    # only micro-batches that cut the config's update into whole parts: 12 examples -> 1, 2 or 4
    assert PR.probe_candidates(512, effective=12)[1] == [1, 2, 4]
    assert PR.probe_candidates(512, effective=4)[1] == [1, 2, 4]
    assert PR.probe_candidates(512, longest=1500)[0] == [512, 1024, 1536, 256, 128, 64]


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_model):
    """Preflight with the probe on the tiny model and data; a faked 5 GB machine makes the tier fixed."""
    from tiny_model import write_chat_data

    root = tmp_path_factory.mktemp("probed")
    data = write_chat_data(root / "data")
    events: list = []
    report, recommended, checks = RUN.run_preflight(
        {"model": str(tiny_model), "data": str(data)}, root / "out", probe=True, emit=events.append,
        hardware=machine(5, 8), device=cpu_device(), probe_shapes=([192, 64], [1, 2]))
    return root, report, recommended, events


def test_probe_on_the_tiny_model(probed):
    root, report, recommended, events = probed
    probes = [e for e in events if isinstance(e, P.ProbeResult)]
    # the <6 GB tier says 128 tokens; the longest example (180) raises it to 192, which fits, so 64 never runs
    assert [(p.batch_size, p.max_seq_length) for p in probes] == [(1, 192), (2, 192)]
    assert all(p.ok and p.peak_memory > 0 and p.tokens_per_second > 0 for p in probes)
    table = report["probe"]
    assert table["ran"] and len(table["rows"]) == 2 and table["picked"]["ok"]
    picked = table["picked"]
    assert recommended["batch_size"] == picked["batch_size"] and recommended["max_seq_length"] == 192
    assert recommended["grad_accumulation_steps"] == 8 // picked["batch_size"]
    assert report["recommendation"]["source"] == "probe"
    # the events stream the checks first, then the probe, then the time it measured, then the done event
    kinds = [type(e).__name__ if not isinstance(e, P.Check) else f"Check:{e.category}" for e in events
             if isinstance(e, (P.Check, P.ProbeResult, P.PreflightDone))]
    assert kinds.index("ProbeResult") > max(i for i, k in enumerate(kinds) if k.startswith("Check:") and k != "Check:time")
    assert kinds[-2:] == ["Check:time", "PreflightDone"]
    timing = next(e for e in events if isinstance(e, P.Check) and e.category == "time")
    assert timing.data["tokens_per_second"] == pytest.approx(picked["tokens_per_second"], abs=0.1)  # the probe's rate


def test_report_and_recommended_config_are_written(probed):
    root, report, recommended, events = probed
    on_disk = json.loads((root / "out" / E.REPORT_FILE).read_text())
    assert on_disk["checks"] and on_disk["recommendation"]["config"] == recommended
    assert {"pass", "warn", "fail"} == set(on_disk["summary"])
    assert json.loads((root / "out" / E.RECOMMENDED_FILE).read_text()) == recommended
    assert C.load(root / "out" / E.RECOMMENDED_FILE) == C.validate(recommended)[0]  # it loads as a config too


@pytest.mark.slow
def test_the_recommended_config_trains(probed, tmp_path):
    from engine.trainer import train

    root, report, recommended, events = probed
    cfg = json.loads((root / "out" / E.RECOMMENDED_FILE).read_text())
    # as recommended except the length: 2 updates instead of 3 epochs, to keep the test short
    cfg.update(epochs=None, iters=2)
    out = io.StringIO()
    done = train(Context(out), cfg, tmp_path / "run")
    assert done.status == "completed", out.getvalue()[-2000:]
    assert (tmp_path / "run" / "final" / "adapters.safetensors").exists()


# ------------------------------------------------- engine subprocess and CLI


@pytest.mark.slow
def test_the_engine_streams_checks_then_preflight_done(tmp_path, tiny_model, tiny_data):
    from enginetools import EngineRun

    engine = EngineRun()
    try:
        events = engine.request(P.Preflight(config={"model": str(tiny_model), "data": str(tiny_data),
                                                    "num_layers": 4}, out=str(tmp_path / "out")))
    finally:
        engine.close()
    kinds = [type(e).__name__ for e in events]
    assert "Error" not in kinds, [e.message for e in events if isinstance(e, P.Error)]
    assert events[-1].status == "ok" and kinds[-2] == "PreflightDone"
    events = events[:-1]
    checks = [e for e in events if isinstance(e, P.Check)]
    assert len(checks) > 15
    assert {c.category for c in checks} >= {"python", "packages", "hardware", "device", "data", "model", "disk",
                                            "memory"}
    done = events[-1]
    assert [c["name"] for c in done.report["checks"]] == [c.name for c in checks]
    assert Path(done.report_path).exists() and Path(done.recommended_path).exists()
    device = next(e for e in engine.events if isinstance(e, P.Hello)).device
    # float32 on a CPU backend (the only fast BLAS path), the base as stored on a GPU (a Mac's too)
    assert done.recommended["base_dtype"] == ("float32" if device == "cpu" else "auto")


@pytest.mark.slow
def test_cli_json_report_and_exit_code(tmp_path, tiny_model, capsys):
    from farense_tui.commands import preflight as cli

    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"model: {tiny_model}\ndata: {tmp_path / 'no-data'}\nnum_layers: 4\n")
    out = io.StringIO()
    code = cli.run(cli.build_parser().parse_args(["--config", str(cfg), "--out", str(tmp_path / "o"), "--json"]),
                   tty=False, out=out)
    report = json.loads(out.getvalue())
    assert code == 1 and report["ok"] is False  # the data folder is missing: a failed check
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [(c["category"], c["name"]) for c in failed] == [("data", "folder")]
    assert failed[0]["fix"]


def test_cli_bad_config_is_one_sentence_and_exit_2(tmp_path, capsys):
    from farense_tui.commands import preflight as cli

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("batch_size: 0\n")
    assert cli.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "batch_size" in err


def test_cli_table_rows_and_colours():
    from farense_tui.commands import preflight as cli

    fail = P.Check(category="disk", name="space", status="fail", detail="Too little space.", fix="Free some.")
    plain = io.StringIO()
    table = cli.Table(plain, tty=False)
    table.check(fail)
    table.probe(P.ProbeResult(batch_size=2, max_seq_length=512, peak_memory=3 * GB, tokens_per_second=123.4, ok=True,
                              note="uses 20% of 16.0 GB"))
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("STATUS") and lines[1].startswith("fail") and "Too little space." in lines[1]
    assert lines[2].strip() == "fix: Free some." and "batch 2 x 512" in lines[3] and "\033[" not in plain.getvalue()
    coloured = io.StringIO()
    cli.Table(coloured, tty=True).check(fail)
    assert "\033[31mfail" in coloured.getvalue()


def test_probe_time_budget_reaches_the_probe(monkeypatch):
    seen = {}
    monkeypatch.setattr(RUN, "run_preflight", lambda *a, **kw: seen.update(kw))

    class Ctx:
        stop_requested = None

        def emit(self, event):
            pass

    RUN.handle_preflight(Ctx(), P.Preflight(probe=True, probe_seconds=600.0))
    assert seen["probe"] is True and seen["probe_seconds"] == 600.0
    line = P.Preflight(probe=True, probe_seconds=30.0).to_line()
    assert P.parse_command(line).probe_seconds == 30.0


def test_warmup_longer_than_the_run_is_flagged():
    from farense_core.datafiles import CheckResult
    from farense_core.schedule import warmup_problem

    found = {"train": CheckResult(path="train.jsonl", samples=chat_samples(10, 1))}  # 10 examples
    long_warmup = CK.check_warmup(config(epochs=2, batch_size=2, grad_accumulation_steps=1, warmup_steps=100), found)
    assert [(c.name, c.status) for c in long_warmup] == [("warmup", "warn")]
    assert long_warmup[0].detail == ("warmup_steps 100 is not shorter than the run's 10 updates: the learning rate "
                                     "never reaches learning_rate.")
    assert long_warmup[0].fix == "Lower warmup_steps (a tenth of the run, 1, is usual)."
    assert CK.check_warmup(config(epochs=2, batch_size=2, warmup_steps=5), found) == []
    assert warmup_problem({"warmup_steps": 0}, 10) == ""


def test_a_few_truncated_examples_never_read_as_none():
    from farense_core.format import share

    assert [share(x) for x in (0.0, 0.001, 0.004, 0.005, 0.5, 0.996, 1.0)] == ["0%", "<1%", "<1%", "<1%", "50%",
                                                                              ">99%", "100%"]


def test_the_config_check_counts_the_same_settings_from_a_file_or_the_app():
    from_file = {"model": "default", "data": "data", "batch_size": 8, "learning_rate": 1e-4, "seed": 0}  # 2 defaults
    from_app, _ = C.validate(from_file)  # the app sends every setting, resolved
    said = [CK.check_config(raw)[1][0] for raw in (from_file, from_app)]
    assert said[0].detail == said[1].detail == "The config is valid: 2 settings differ from the defaults."
    assert said[0].data["keys"] == ["batch_size", "epochs"]  # epochs: 1 when neither epochs nor iters is set
