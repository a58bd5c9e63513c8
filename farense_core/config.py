"""The training configuration: schema, defaults, YAML loading and validation.

Accepts the keys of an ``mlx_lm.lora -c`` YAML file with the same meaning, plus
our own (``epochs``, ``warmup_steps``, ``base_dtype`` and the memory settings).
Every value is checked before anything loads; a bad one raises ``ConfigError``
with one sentence naming the key, the value and what is allowed.

One difference from mlx-lm: ``iters`` counts optimizer updates. One update
consumes ``batch_size x grad_accumulation_steps`` samples. (In mlx-lm ``iters``
counts micro-batches.)

Standard library and PyYAML only: the UI validates as you type with it.
"""

from __future__ import annotations

import copy
import io
import difflib
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml


class ConfigError(ValueError):
    """One sentence: the key, the value, what is allowed."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    group: str
    help: str
    check: Optional[Callable[[str, Any], Any]] = None  # returns the normalised value or raises

    @property
    def choices(self) -> tuple:
        """The values it may take, when they are a short list (a UI's pick-list); () otherwise."""
        return tuple(getattr(self.check, "options", ()))


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _int(minimum: int, maximum: Optional[int] = None, allow: tuple = ()) -> Callable:
    def check(key, v):
        if v in allow and not isinstance(v, bool):
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ConfigError(f"{key} is {_fmt(v)}, but it must be a whole number.", key)
        extra = f" (or {', '.join(map(str, allow))})" if allow else ""
        if v < minimum or (maximum is not None and v > maximum):
            rng = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ConfigError(f"{key} is {v}, but it must be {rng}{extra}.", key)
        return v

    return check


def _float(minimum: float, maximum: Optional[float] = None, strict_min: bool = False) -> Callable:
    def check(key, v):
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ConfigError(f"{key} is {_fmt(v)}, but it must be a number.", key) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key} is {_fmt(v)}, but it must be a finite number.", key)
        low_bad = v <= minimum if strict_min else v < minimum
        if low_bad or (maximum is not None and v > maximum):
            low = f"greater than {minimum}" if strict_min else f"at least {minimum}"
            rng = low if maximum is None else f"{low} and at most {maximum}"
            raise ConfigError(f"{key} is {v}, but it must be {rng}.", key)
        return float(v)

    return check


def _choice(*options) -> Callable:
    def check(key, v):
        if isinstance(v, bool) and {"on", "off"} <= set(options):
            v = "on" if v else "off"  # YAML reads a bare on/off as true/false
        if v not in options:
            raise ConfigError(
                f"{key} is {_fmt(v)}, but it must be one of: {', '.join(map(str, options))}.", key
            )
        return v

    check.options = options  # a UI offers them as a pick-list
    return check


def _bool(key, v):
    if not isinstance(v, bool):
        raise ConfigError(f"{key} is {_fmt(v)}, but it must be true or false.", key)
    return v


def _text(key, v):
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{key} is {_fmt(v)}, but it must be a non-empty path or name.", key)
    return v


LR_SCHEDULES = ("constant", "cosine", "linear")
LORA_KEYS_DEFAULT = None  # mlx-lm's default: every linear layer of the trained blocks


def _lora_parameters(key, v):
    if not isinstance(v, dict):
        raise ConfigError(f"{key} is {_fmt(v)}, but it must be a mapping with rank, scale and dropout.", key)
    allowed = {"rank", "scale", "dropout", "keys", "alpha"}
    for k in v:
        if k not in allowed:
            raise ConfigError(f"{key}.{k} is not a LoRA setting; allowed: rank, scale, dropout, keys.", f"{key}.{k}")
    if "alpha" in v and "scale" not in v:
        raise ConfigError(
            f"{key}.alpha is {_fmt(v['alpha'])}, but mlx-lm uses scale, not alpha: set {key}.scale "
            f"(alpha / rank is the usual equivalent).",
            f"{key}.alpha",
        )
    out = {
        "rank": _int(1, 4096)(f"{key}.rank", v.get("rank", 8)),
        "scale": _float(0.0, strict_min=True)(f"{key}.scale", v.get("scale", 20.0)),
        "dropout": _float(0.0, 0.9)(f"{key}.dropout", v.get("dropout", 0.0)),
    }
    keys = v.get("keys")
    if keys is not None:
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(
                f"{key}.keys is {_fmt(keys)}, but it must be a list of module names such as "
                f"self_attn.q_proj.",
                f"{key}.keys",
            )
        out["keys"] = list(keys)
    return out


def _lr_schedule(key, v):
    if v is None:
        return None
    if isinstance(v, str):
        return _choice(*LR_SCHEDULES)(key, v)
    if isinstance(v, dict):  # mlx-lm form: {name, arguments, warmup, warmup_init}
        name = v.get("name")
        if name not in ("cosine_decay", "linear_schedule", "exponential_decay", "step_decay"):
            raise ConfigError(
                f"{key}.name is {_fmt(name)}, but it must be one of: cosine_decay, linear_schedule, "
                f"exponential_decay, step_decay (or set {key} to constant, cosine or linear).",
                f"{key}.name",
            )
        args = v.get("arguments")
        if not isinstance(args, list) or not args or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
        ):
            raise ConfigError(f"{key}.arguments is {_fmt(args)}, but it must be a list of numbers.", f"{key}.arguments")
        for k in v:
            if k not in ("name", "arguments", "warmup", "warmup_init"):
                raise ConfigError(f"{key}.{k} is not a schedule setting; allowed: name, arguments, warmup, warmup_init.", f"{key}.{k}")
        out = {"name": name, "arguments": [float(a) for a in args]}
        if "warmup" in v:
            out["warmup"] = _int(0)(f"{key}.warmup", v["warmup"])
        if "warmup_init" in v:
            out["warmup_init"] = _float(0.0)(f"{key}.warmup_init", v["warmup_init"])
        return out
    raise ConfigError(
        f"{key} is {_fmt(v)}, but it must be one of {', '.join(LR_SCHEDULES)} or an mlx-lm schedule mapping.", key
    )


_lr_schedule.options = LR_SCHEDULES  # the mlx-lm mapping form is typed, not picked


EARLY_STOP_METRICS = ("recall", "val_loss")


def _early_stop(key, v):
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ConfigError(f"{key} is {_fmt(v)}, but it must be a mapping with metric, patience and min_delta "
                          f"(or empty to train to the end).", key)
    for k in v:
        if k not in ("metric", "patience", "min_delta"):
            raise ConfigError(f"{key}.{k} is not an early-stop setting; allowed: metric, patience, min_delta.",
                              f"{key}.{k}")
    return {
        "metric": _choice(*EARLY_STOP_METRICS)(f"{key}.metric", v.get("metric", "recall")),
        "patience": _int(1)(f"{key}.patience", v.get("patience", 3)),
        "min_delta": _float(0.0)(f"{key}.min_delta", v.get("min_delta", 0.0)),
    }


OPTIMIZER_NAMES = ("adam", "adamw", "sgd", "adafactor")


def _optimizer_config(key, v):
    if not isinstance(v, dict) or not all(isinstance(x, dict) for x in v.values()):
        raise ConfigError(f"{key} is {_fmt(v)}, but it must map an optimizer name to its settings.", key)
    for name in v:
        if name not in OPTIMIZER_NAMES:
            raise ConfigError(f"{key}.{name} is not an optimizer; name one of {', '.join(OPTIMIZER_NAMES)}.",
                              f"{key}.{name}")
    return v


SETTINGS: list[Setting] = [
    # model and data
    Setting("model", "default", "model and data",
            "Local MLX model folder, a Hugging Face id, or default (the embedded SmolLM2-135M-Instruct).", _text),
    Setting("data", "data", "model and data", "Folder with train.jsonl and valid.jsonl.", _text),
    Setting("fine_tune_type", "lora", "model and data", "lora, dora or full.", _choice("lora", "dora", "full")),
    Setting("base_dtype", "auto", "model and data",
            "Dtype of the base: auto keeps a quantized base quantized on a GPU and dequantizes "
            "to float32 on a CPU backend and for full fine-tuning.",
            _choice("auto", "float32", "bfloat16", "float16", "keep")),
    Setting("mask_prompt", False, "model and data", "Train only on the assistant's answer.", _bool),
    Setting("max_seq_length", 512, "model and data", "Longer examples are truncated.", _int(8, 131072)),
    # training
    Setting("batch_size", 4, "training", "Samples per micro-batch.", _int(1, 4096)),
    Setting("grad_accumulation_steps", 1, "training",
            "Micro-batches averaged into one optimizer update.", _int(1, 1024)),
    Setting("epochs", None, "training", "Passes over the training data (instead of iters).",
            lambda k, v: None if v is None else _float(0.0, 10000, strict_min=True)(k, v)),
    Setting("iters", None, "training",
            "Optimizer updates to train for (one update = batch_size x grad_accumulation_steps samples).",
            lambda k, v: None if v is None else _int(1)(k, v)),
    Setting("learning_rate", 1e-4, "training", "Peak learning rate (0 trains nothing: a baseline).",
            _float(0.0, 1.0)),
    Setting("optimizer", "adam", "training", "adam, adamw, sgd or adafactor.", _choice(*OPTIMIZER_NAMES)),
    Setting("optimizer_config", {}, "training", "Extra optimizer settings, as in mlx-lm.", _optimizer_config),
    Setting("grad_checkpoint", False, "training", "Recompute activations to save memory.", _bool),
    Setting("frozen_cache", "auto", "training",
            "Keep the frozen blocks' output from the first epoch and start later epochs' steps above them: auto "
            "when the run repeats its data and the cache fits in a quarter of available memory; on; off.",
            _choice("auto", "on", "off")),
    Setting("dequant_matmul", "auto", "training",
            "A quantized base's layers unpack their weights, then run a float matmul, for the many rows of a "
            "training step: auto on a CUDA GPU (faster there); on; off (MLX's quantized kernel).",
            _choice("auto", "on", "off")),
    Setting("seed", 0, "training", "Seed for the data order, LoRA init and dropout.", _int(0, 2**31 - 1)),
    # LoRA
    Setting("num_layers", 16, "lora", "Transformer blocks to adapt, from the last (-1 for all).",
            _int(1, 100000, allow=(-1,))),
    Setting("lora_parameters", {"rank": 8, "scale": 20.0, "dropout": 0.0}, "lora",
            "rank, scale, dropout and optional keys (module names).", _lora_parameters),
    # schedule
    Setting("lr_schedule", None, "schedule", "constant, cosine or linear (decay after warmup).", _lr_schedule),
    Setting("warmup_steps", 0, "schedule", "Updates of linear warmup from 0 to the learning rate.", _int(0)),
    Setting("min_lr_ratio", 0.1, "schedule", "Where cosine/linear decay ends, as a share of the peak.",
            _float(0.0, 1.0)),
    # checkpoints and reporting
    Setting("steps_per_report", 10, "checkpoints", "Updates between loss reports in the log.", _int(1)),
    Setting("steps_per_eval", 200, "checkpoints", "Updates between validations.", _int(1)),
    Setting("val_batches", 25, "checkpoints", "Validation batches (-1 for the whole set).", _int(1, allow=(-1,))),
    Setting("save_every", 100, "checkpoints", "Updates between checkpoints.", _int(1)),
    Setting("keep_checkpoints", 3, "checkpoints", "Newest periodic checkpoints kept (0 keeps all).", _int(0)),
    Setting("auto_resume", 0, "checkpoints",
            "Times a run whose engine dies is resumed from its newest checkpoint on its own (after running out "
            "of memory: half the batch, twice the accumulation; the same updates).", _int(0, 100)),
    # evaluation: what the model knows, and stopping a run that went wrong
    Setting("eval_samples", 64, "evaluation",
            "Recall probe: this many trained questions, and as many paraphrases from probe_paraphrase.jsonl, "
            "checked at every validation (0: off).", _int(0, 100000)),
    Setting("best_by", "recall", "evaluation",
            "What picks the adapter kept in adapters/: recall on the probe, or val_loss.",
            _choice("recall", "val_loss")),
    Setting("early_stop", None, "evaluation",
            "Stop when {metric: recall or val_loss} has not improved by min_delta for patience validations.",
            _early_stop),
    Setting("divergence_factor", 3.0, "evaluation",
            "Stop as diverged when the smoothed loss stays this many times above its lowest value.",
            _float(1.0, strict_min=True)),
    Setting("divergence_patience", 10, "evaluation",
            "Updates the loss may stay that high before the run is stopped as diverged.", _int(1)),
    # memory
    Setting("clear_cache_every", 10, "memory", "Clear MLX's buffer cache every N updates (0: never).", _int(0)),
    Setting("low_memory_gb", 2.0, "memory",
            "Clear the cache whenever system available memory falls under this (GB).", _float(0.0)),
    Setting("memory_guard_gb", 0.75, "memory",
            "Checkpoint and stop when available memory falls under this (GB; 0: off).", _float(0.0)),
]

BY_KEY = {s.key: s for s in SETTINGS}
GROUPS = ["model and data", "training", "lora", "schedule", "checkpoints", "evaluation", "memory"]

# mlx_lm.lora keys that make sense there but not in a run of ours: accepted, ignored.
_RUN_FOLDER = "the run folder takes the adapters (--run-dir)"
_NO_LOGGER = "the run folder's events.jsonl records the run; no external logger is used"
_LOCAL_DATA = "data is a local folder of JSONL files; rename the fields to messages, prompt/completion or text"
IGNORED_MLX_LM_KEYS = {  # key -> why it does not apply here
    "train": "farense-tui train always trains", "test": "evaluate with 'farense-tui eval' after training",
    "test_batches": "evaluate with 'farense-tui eval' after training", "adapter_path": _RUN_FOLDER,
    "resume_adapter_file": "resume a run with --resume (it restores the optimizer and data order too)",
    "report_to": _NO_LOGGER, "project_name": _NO_LOGGER, "wandb": _NO_LOGGER,
    "trust_remote_code": "only local MLX models and the embedded default load", "config": "this file is the config",
    "hf_dataset": _LOCAL_DATA, "prompt_feature": _LOCAL_DATA, "completion_feature": _LOCAL_DATA,
    "chat_feature": _LOCAL_DATA, "text_feature": _LOCAL_DATA,
    "clear_cache_threshold": "clear_cache_every and low_memory_gb do that",
}


RECOMMENDED_FILE = "recommended_config.json"  # preflight writes it into its output folder


def defaults() -> dict:
    return {s.key: copy.deepcopy(s.default) for s in SETTINGS}


class Note(str):
    """A note on a config (a str), with the code its warning event carries."""

    code = "config"

    @classmethod
    def of(cls, text: str, code: str) -> "Note":
        note = cls(text)
        note.code = code
        return note


def validate(raw: dict) -> tuple[dict, list[str]]:
    """Check every key; return the resolved config and notes on ignored keys.

    Raises ConfigError on the first bad value.
    """
    if not isinstance(raw, dict):
        raise ConfigError("The config must be a YAML mapping of keys to values.")
    notes = []
    out = defaults()
    for key, value in raw.items():
        if key in IGNORED_MLX_LM_KEYS:
            notes.append(Note.of(f"{key} is an mlx_lm.lora option, ignored here: {IGNORED_MLX_LM_KEYS[key]}.",
                                 "ignored_key"))
            continue
        setting = BY_KEY.get(key)
        if setting is None:
            close = difflib.get_close_matches(str(key), BY_KEY, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{key} is not a known setting.{hint}", str(key))
        out[key] = setting.check(key, value) if setting.check else value
    if out["epochs"] is not None and out["iters"] is not None:
        raise ConfigError("epochs and iters are both set; set only one of them.", "epochs")
    if out["epochs"] is None and out["iters"] is None:
        out["epochs"] = 1.0
    if out["iters"] is not None and out["grad_accumulation_steps"] > 1:
        n, k = out["iters"], out["grad_accumulation_steps"]
        notes.append(Note.of(
            f"iters counts optimizer updates here, each of grad_accumulation_steps {k} micro-batches; mlx_lm.lora "
            f"counts micro-batches, so iters {n} trains {k} times the examples it would there (iters "
            f"{max(n // k, 1)} trains as much as mlx_lm.lora's {n}).", "iters_counts_updates"))
    return out, notes


def resolve_base_dtype(choice: str, quantized_bits: Optional[int], float_dtype: str, on_cpu: bool,
                       full: bool = False, float32_fits: bool = True) -> str:
    """What the base computes in for ``base_dtype: choice``: "4-bit" (kept as stored) or a float dtype.

    ``auto`` keeps a quantized base quantized on a GPU (that is what keeps a large model in memory) and
    computes it in float32 on a CPU backend, where only float32 matmuls get BLAS help, unless a float32
    copy does not fit (``float32_fits``). Full fine-tuning trains the base's own weights, which a quantized
    base cannot do: ``auto`` trains a float32 copy and ``keep`` is refused.
    """
    if full and quantized_bits and choice == "keep":
        raise ConfigError("fine_tune_type full trains the base's own weights, which a quantized base cannot do; "
                          "set base_dtype to auto, float32 or bfloat16.", "base_dtype")
    kept = f"{quantized_bits}-bit" if quantized_bits else float_dtype
    if choice == "keep":
        return kept
    if choice == "auto":
        if full:
            return "float32"
        if quantized_bits and (not on_cpu or not float32_fits):
            return kept
        return "float32" if on_cpu else kept
    return choice


def flag(key: str) -> str:
    """The command-line flag of a setting, as mlx_lm.lora spells it: batch_size -> --batch-size."""
    return "--" + key.replace("_", "-")


def parse_value(key: str, text: str) -> Any:
    """A setting's value as typed on a command line, read as YAML (2e-4, true, {rank: 16}) like the
    config file; ConfigError when it is not YAML."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        raise ConfigError(f"{flag(key)} {text} cannot be read; give a value as the config file would, e.g. "
                          f"{flag(key)} {_fmt(BY_KEY[key].default) if BY_KEY[key].default is not None else 1}.",
                          key) from None


def effective_batch_size(cfg: dict) -> int:
    return int(cfg["batch_size"]) * int(cfg["grad_accumulation_steps"])


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config (ours or mlx_lm.lora's); raises ConfigError for a file that is not one."""
    p = Path(path)
    if p.is_dir():
        hint = f" (a run keeps its own in {p / 'config.yaml'})" if (p / "config.yaml").is_file() else ""
        raise ConfigError(f"{p} is a folder, not a config file; give the YAML file itself{hint}.")
    if not p.is_file():
        raise ConfigError(f"The config file {p} does not exist; check the path.")
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)
    except DuplicateKey as e:
        raise ConfigError(f"{p} sets {e.key} twice (lines {e.first} and {e.second}); keep one of them.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p} is not valid YAML{where}; fix the syntax and try again.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8 text; save it as UTF-8 and try again.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of settings, not a {type(raw).__name__}.")
    return raw


def load(path: str | os.PathLike) -> dict:
    """Load and validate. Relative paths stay relative to the working directory, as in mlx_lm.lora."""
    cfg, _ = validate(load_yaml(path))
    return cfg


def dump_yaml(cfg: dict) -> str:
    ordered = {s.key: cfg[s.key] for s in SETTINGS if s.key in cfg}
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside the target, fsync, then rename over it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside the target, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_yaml(cfg: dict, path: str | os.PathLike) -> None:
    atomic_write_text(path, dump_yaml(cfg))


ALWAYS_WRITTEN = ("model", "data")  # a config file names what it trains on, even at the defaults


def chosen(cfg: dict) -> dict:
    """The settings of a resolved config a file needs to hold: those that differ from the defaults,
    and the model and data."""
    base = defaults()
    return {k: v for k, v in cfg.items() if k in ALWAYS_WRITTEN or v != base.get(k)}


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two resolved configs, as "key old -> new"."""
    return [f"{k} {_fmt(old.get(k))} → {_fmt(new.get(k))}" for k in new if old.get(k) != new.get(k)]


def write_config_file(cfg: dict, path: str | os.PathLike) -> None:
    """Write a resolved config as a user's config file: into an existing file by changing only its
    values that differ (its comments, order and keys are kept; a key it lacks is added when it
    differs from the default); a new file holds ``chosen(cfg)``. Atomic, as every write."""
    from ruamel.yaml import YAML

    path = Path(path)
    rt = YAML()  # round trip: comments and layout survive
    rt.width = 4096
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    # 3e-05 is a string to YAML 1.1 readers (PyYAML); write floats as PyYAML does: 3.0e-05
    rt.representer.add_representer(float, lambda r, v: r.represent_scalar(
        "tag:yaml.org,2002:float", yaml.safe_dump(v).splitlines()[0]))
    if path.is_file():
        doc = rt.load(path.read_text(encoding="utf-8"))
        before, _ = validate(load_yaml(path))
        if doc is None or not hasattr(doc, "keys"):
            doc = {}
        for key, value in cfg.items():
            if key in doc and before.get(key) != value:
                doc[key] = value
            elif key not in doc and before.get(key) != value and value != defaults().get(key):
                doc[key] = value
    else:
        doc = chosen(cfg)
    out = io.StringIO()
    rt.dump(doc, out)
    atomic_write_text(path, out.getvalue())


def command_line(config_path: str = "config.yaml", run_dir: str = "checkpoints/run") -> str:
    """The headless command that trains a saved config (the Config tab's preview)."""
    return f"farense-tui train --config {config_path} --run-dir {run_dir}"


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: int, second: int):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-5 as a string; read it as a float, as mlx_lm.lora does. A key given twice in
    one mapping is an error (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base loader says what is wrong
                break
            if first != key_node.start_mark.line + 1:
                raise DuplicateKey(str(key), first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
