import pytest

from farense_core import config as C


def ok(**kw):
    kw.setdefault("model", "some/model")
    return C.validate(kw)[0]


def test_defaults_fill_every_key():
    cfg = ok()
    assert set(cfg) == {s.key for s in C.SETTINGS}
    assert cfg["epochs"] == 1.0 and cfg["iters"] is None


@pytest.mark.parametrize("raw, message", [
    ({"batch_size": 0}, "batch_size is 0, but it must be between 1 and 4096."),
    ({"batch_size": 2.5}, "batch_size is 2.5, but it must be a whole number."),
    ({"batch_size": True}, "batch_size is True, but it must be a whole number."),
    ({"learning_rate": -1}, "learning_rate is -1, but it must be at least 0.0 and at most 1.0."),
    ({"learning_rate": "fast"}, "learning_rate is 'fast', but it must be a number."),
    ({"fine_tune_type": "qlora"}, "fine_tune_type is 'qlora', but it must be one of: lora, dora, full."),
    ({"base_dtype": "int8"}, "base_dtype is 'int8', but it must be one of: auto, float32, bfloat16, float16, keep."),
    ({"batchsize": 4}, "batchsize is not a known setting. Did you mean batch_size?"),
    ({"epochs": 2, "iters": 100}, "epochs and iters are both set; set only one of them."),
    ({"lr_schedule": "cos"}, "lr_schedule is 'cos', but it must be one of: constant, cosine, linear."),
    ({"lora_parameters": {"rank": 8, "alpha": 16}}, "lora_parameters.alpha is 16, but mlx-lm uses scale, not alpha"),
    ({"lora_parameters": {"rank": 0, "scale": 1}}, "lora_parameters.rank is 0, but it must be between 1 and 4096."),
    ({"num_layers": 0}, "num_layers is 0, but it must be between 1 and 100000 (or -1)."),
    ({"mask_prompt": "yes"}, "mask_prompt is 'yes', but it must be true or false."),
    ({"memory_guard_gb": -1}, "memory_guard_gb is -1, but it must be at least 0.0."),
])
def test_bad_values_get_one_sentence_naming_key_value_and_allowed(raw, message):
    raw = {"model": "m", **raw}
    with pytest.raises(C.ConfigError) as e:
        C.validate(raw)
    assert str(e.value).startswith(message)
    assert str(e.value).count("\n") == 0


def test_model_defaults_to_the_embedded_default_and_must_not_be_empty():
    assert C.validate({})[0]["model"] == "default"
    with pytest.raises(C.ConfigError, match="model is '', but it must be a non-empty path or name."):
        C.validate({"model": ""})


def test_mlx_lm_lora_yaml_loads_with_the_same_meaning(tmp_path):
    f = tmp_path / "lora.yaml"
    f.write_text(
        "model: mlx-community/Mistral-7B-Instruct-v0.3-4bit\ntrain: true\ndata: data\n"
        "fine_tune_type: lora\noptimizer: adamw\nseed: 0\nnum_layers: 8\nbatch_size: 2\niters: 600\n"
        "val_batches: 25\nlearning_rate: 1e-5\nsteps_per_report: 10\nsteps_per_eval: 200\n"
        "resume_adapter_file: null\nadapter_path: adapters\nsave_every: 100\ntest: false\n"
        "max_seq_length: 2048\ngrad_checkpoint: false\nmask_prompt: true\n"
        "lora_parameters:\n  keys: [self_attn.q_proj, self_attn.v_proj]\n  rank: 8\n  scale: 20.0\n  dropout: 0.0\n"
        "lr_schedule:\n  name: cosine_decay\n  warmup: 100\n  warmup_init: 1e-7\n  arguments: [1e-5, 1000, 1e-7]\n"
    )
    cfg, notes = C.validate(C.load_yaml(f))
    assert cfg["learning_rate"] == 1e-5  # YAML 1.1 would read "1e-5" as a string
    assert cfg["iters"] == 600 and cfg["epochs"] is None
    assert cfg["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert cfg["lr_schedule"]["name"] == "cosine_decay" and cfg["lr_schedule"]["warmup"] == 100
    assert any("adapter_path" in n for n in notes)


def test_yaml_round_trip_is_atomic_and_lossless(tmp_path):
    cfg = ok(batch_size=2, lr_schedule="cosine")
    path = tmp_path / "c.yaml"
    C.save_yaml(cfg, path)
    assert C.load(path) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]  # no temp file left behind


def test_a_bare_on_or_off_in_yaml_is_the_choice_it_names(tmp_path):
    # YAML 1.1 reads on/off as true/false; the settings whose choices are "on" and "off" take them back
    f = tmp_path / "c.yaml"
    f.write_text("frozen_cache: off\ndequant_matmul: on\n")
    cfg = C.load(f)
    assert (cfg["frozen_cache"], cfg["dequant_matmul"]) == ("off", "on")
    with pytest.raises(C.ConfigError, match="fine_tune_type is False, but it must be one of: lora, dora, full"):
        C.validate({"fine_tune_type": False})  # other choices are not on/off


def test_broken_yaml_is_one_sentence(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("batch_size: [1,\n")
    with pytest.raises(C.ConfigError, match=r"is not valid YAML at line \d+; fix the syntax"):
        C.load_yaml(f)
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_yaml(tmp_path / "missing.yaml")


def test_effective_batch_size():
    assert C.effective_batch_size(ok(batch_size=3, grad_accumulation_steps=4)) == 12


def test_a_key_given_twice_is_named_with_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 2\nlearning_rate: 1e-5\nbatch_size: 4\n")
    with pytest.raises(C.ConfigError, match=r"c.yaml sets batch_size twice \(lines 1 and 3\); keep one of them."):
        C.load_yaml(path)
    path.write_text("lora_parameters:\n  rank: 4\n  rank: 8\n")
    with pytest.raises(C.ConfigError, match=r"sets rank twice \(lines 2 and 3\)"):
        C.load_yaml(path)
    path.write_text("batch_size: 2\nlora_parameters: {rank: 4}\n")  # no duplicates: read as before
    assert C.load_yaml(path) == {"batch_size": 2, "lora_parameters": {"rank": 4}}


def test_a_folder_given_as_the_config_is_named_as_a_folder(tmp_path):
    with pytest.raises(C.ConfigError, match=r"is a folder, not a config file; give the YAML file itself\.$"):
        C.load_yaml(tmp_path)
    (tmp_path / "config.yaml").write_text("batch_size: 2\n")
    with pytest.raises(C.ConfigError, match=r"give the YAML file itself \(a run keeps its own in .*config.yaml\)"):
        C.load_yaml(tmp_path)


def test_writing_into_a_config_file_changes_only_its_values_that_differ(tmp_path):
    import shutil

    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "configs" / "farense.yaml"
    path = tmp_path / "farense.yaml"
    shutil.copy(shipped, path)
    cfg, _ = C.validate(C.load_yaml(path))
    C.write_config_file({**cfg, "batch_size": 4, "grad_accumulation_steps": 8, "auto_resume": 2}, path)
    before, after = shipped.read_text().splitlines(), path.read_text().splitlines()
    assert [line for line in after if line not in before] == [
        "batch_size: 4",
        "grad_accumulation_steps: 8  # the measured updates of 32 examples, in micro-batches of 8 (peak ~7 GB, not ~21)",
        "auto_resume: 2"]
    assert [line for line in before if line not in after] == ["batch_size: 8", before[12]]  # comments all kept
    assert C.validate(C.load_yaml(path))[0] == {**cfg, "batch_size": 4, "grad_accumulation_steps": 8, "auto_resume": 2}
    C.write_config_file(C.validate({"data": "d", "iters": 50, "batch_size": 2})[0], tmp_path / "new.yaml")
    assert C.load_yaml(tmp_path / "new.yaml") == {"model": "default", "data": "d", "batch_size": 2, "iters": 50}


def test_an_mlx_lm_config_is_told_what_iters_means_here_and_why_keys_are_ignored():
    _, notes = C.validate({"iters": 1000, "grad_accumulation_steps": 4, "report_to": "wandb", "batch_size": 4})
    assert notes == [
        "report_to is an mlx_lm.lora option, ignored here: the run folder's events.jsonl records the run; no "
        "external logger is used.",
        "iters counts optimizer updates here, each of grad_accumulation_steps 4 micro-batches; mlx_lm.lora counts "
        "micro-batches, so iters 1000 trains 4 times the examples it would there (iters 250 trains as much as "
        "mlx_lm.lora's 1000)."]
    assert [n.code for n in notes] == ["ignored_key", "iters_counts_updates"]
    assert C.validate({"iters": 1000})[1] == []  # no accumulation: the same count as mlx_lm.lora
