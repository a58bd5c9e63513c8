"""LoRA / DoRA / full fine-tuning with exact resume, on mlx-lm's model code, layers and datasets.

One update = ``grad_accumulation_steps`` micro-batches of ``batch_size`` samples, cut from one
length bucket of ``batch_size x grad_accumulation_steps`` examples (``batching.bucket_updates``).
The gradient of an update is the token-weighted mean over all its micro-batches (sum of per-token
losses, divided by the update's loss-bearing tokens), so batch 32 x accumulation 1 and batch 8 x
accumulation 4 train the same updates on the same examples, with a quarter of the memory. The
epoch's last, smaller bucket is an update of its own, never dropped. Every update is evaluated
before the next starts.

Checkpoints hold everything resume needs: adapter, optimizer state, update count, epoch,
position in the epoch's batch order, MLX's RNG key, and the state of the run's judges (the best
adapter so far, early stopping, the divergence guard). They are written into a temporary folder
and renamed into place, so a kill mid-write leaves the previous one intact; a model whose weights
are no longer finite is never written.

At every validation, besides the validation loss, one forward pass over the probe (trained
questions and their paraphrases, ``engine.probe``) gives teacher-forced recall: what share of
answers greedy decoding would reproduce exactly. ``best_by`` picks the adapter kept in
``adapters/`` by it (or by validation loss), ``early_stop`` ends a run that stopped improving, and
``engine.health`` stops a diverging one, removing the checkpoints written while it diverged.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import psutil
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from . import batching
from . import config as C
from . import probe as probes
from . import protocol as P
from .datatools import length_stats, sample_format
from .health import DivergenceGuard, Progress, Validation
from .models import ModelNotFoundError, locate_model, resolve_model
from .schedule import learning_rate_at
from .server import Context, handles

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "state.json"
METRIC_FIELDS = [
    "step", "epoch", "loss", "learning_rate", "tokens", "trained_tokens", "tokens_per_second",
    "iterations_per_second", "elapsed", "val_loss", "recall", "token_accuracy", "mlx_active", "mlx_peak", "rss",
    "system_available",
]
GB = 1024 ** 3


class TrainingError(Exception):
    """A problem with the user's inputs, reported as one sentence."""


class Diverged(Exception):
    """The run diverged; the message says what happened, ``first_bad`` since which update."""

    def __init__(self, message: str, first_bad: Optional[int] = None):
        super().__init__(message)
        self.first_bad = first_bad


# ------------------------------------------------------------------ helpers


_PROCESS = psutil.Process()


def memory_snapshot() -> P.Memory:
    vm = psutil.virtual_memory()
    return P.Memory(
        mlx_active=int(mx.get_active_memory()), mlx_cache=int(mx.get_cache_memory()),
        mlx_peak=int(mx.get_peak_memory()), rss=int(_PROCESS.memory_info().rss),
        system_available=int(vm.available), system_total=int(vm.total),
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_safetensors(path: Path, arrays: dict) -> None:
    mx.save_safetensors(str(path), arrays)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_adapter(folder: Path, weights: dict, adapter_config: dict) -> None:
    """mlx-lm's layout, each file replaced atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".adapters.{os.getpid()}.tmp.safetensors"
    _save_safetensors(tmp, weights)
    os.replace(tmp, folder / "adapters.safetensors")
    C.atomic_write_text(folder / "adapter_config.json", json.dumps(adapter_config, indent=2))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        raise TrainingError(f"{path} is not UTF-8 text; run 'farense-tui data check {path}'.") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise TrainingError(f"{path}:{n} is not valid JSON; run 'farense-tui data check {path}' to see every problem.") from None
        if not isinstance(obj, dict):
            raise TrainingError(f"{path}:{n} is not a JSON object; run 'farense-tui data check {path}'.")
        rows.append(obj)
    return rows


def data_format(sample: dict) -> str:
    return sample_format(sample) or "unknown"


def token_figures(lengths: list[int], max_seq_length: int) -> dict:
    if not lengths:
        return {}
    st = length_stats(lengths, max_seq_length)
    return {"min": st.min, "max": st.max, "mean": st.mean, "median": st.median, "p95": st.p95,
            "total": sum(lengths)}


@dataclass
class Tokenized:
    tokens: list[list[int]]
    offsets: list[int]

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


def tokenize(rows: list[dict], tokenizer, mask_prompt: bool, name: str) -> Tokenized:
    from mlx_lm.tuner.datasets import create_dataset

    if not rows:
        return Tokenized([], [])
    fmt = data_format(rows[0])
    for i, r in enumerate(rows, 1):
        if data_format(r) != fmt:
            raise TrainingError(f"{name} mixes formats (line {i} is {data_format(r)}, the first is {fmt}); "
                                f"run 'farense-tui data check' on it.")
    if fmt == "unknown":
        raise TrainingError(f"{name} is not chat (messages), completions (prompt, completion) or text; "
                            f"run 'farense-tui data check' on it.")
    if fmt == "text" and mask_prompt:
        raise TrainingError("mask_prompt needs chat or completions data; set mask_prompt: false for text data.")
    ds = create_dataset(rows, tokenizer, _Namespace(mask_prompt=mask_prompt))
    tokens, offsets = [], []
    for i in range(len(ds)):
        t, off = ds.process(ds[i])
        tokens.append(list(t))
        offsets.append(int(off))
    return Tokenized(tokens, offsets)


class _Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def pad_multiple() -> int:
    return batching.PAD_MULTIPLE_CPU if mx.default_device().type == mx.cpu else batching.PAD_MULTIPLE_GPU


def make_batch(data: Tokenized, indices: list[int], max_seq_length: int, multiple: int = batching.PAD_MULTIPLE):
    """Inputs, targets and the loss mask of one micro-batch (right padding)."""
    lens = [min(len(data.tokens[i]), max_seq_length) for i in indices]
    width = batching.padded_length(max(lens), max_seq_length, multiple)
    arr = np.zeros((len(indices), width), np.int32)
    mask = np.zeros((len(indices), width - 1), np.float32)
    for row, (i, n) in enumerate(zip(indices, lens)):
        arr[row, :n] = data.tokens[i][:n]
        # target position t predicts token t+1; train on tokens offset..n-1
        start = max(data.offsets[i], 1)
        mask[row, start - 1:n - 1] = 1.0
    return mx.array(arr[:, :-1]), mx.array(arr[:, 1:]), mx.array(mask)


def compiled_step(model, optimizer, value_and_grad=None):
    """One compiled function over the model, optimizer and RNG state, as mlx-lm does (fused kernels,
    fewer temporaries): a micro-batch's gradient added to the update's running sum and, on the update's
    last micro-batch (``do_update``), the optimizer step with the token-weighted mean.

    ``step(inputs, targets, mask, loss_sum, ntoks, grads, do_update) -> (loss_sum, ntoks, grads)``
    """
    value_and_grad = value_and_grad or nn.value_and_grad(model, summed_loss)
    optimizer.init(model.trainable_parameters())
    state = [model.state, optimizer.state, mx.random.state]

    def step(inputs, targets, mask, loss_sum, ntoks, grads, do_update):
        (loss, n), g = value_and_grad(model, inputs, targets, mask)
        if grads is not None:  # the first micro-batch of an update is its own trace
            g = tree_map(mx.add, grads, g)
            loss, n = loss + loss_sum, n + ntoks
        if do_update:
            optimizer.update(model, tree_map(lambda x: x / n, g))
            g = None
        return loss, n, g

    return mx.compile(step, inputs=state, outputs=state)


def summed_loss(model, inputs, targets, mask):
    """Sum of per-token cross-entropy over the mask, and the number of tokens."""
    logits = model(inputs)
    ce = nn.losses.cross_entropy(logits, targets) * mask  # in the logits' dtype: a float32 copy of
    return ce.astype(mx.float32).sum(), mask.sum()       # batch x length x vocab costs memory


# ------------------------------------------------------------------- model


def load_model(name: str):
    """mlx-lm's loader, with one sentence for a model that is not there."""
    from mlx_lm.utils import load

    try:
        path = locate_model(name)
    except ModelNotFoundError as e:
        raise TrainingError(str(e)) from None
    try:
        return load(path)
    except Exception as e:  # noqa: BLE001 - hub errors, bad configs
        if not Path(path).exists():
            raise TrainingError(f"The model {name} is not a local folder and could not be fetched from the "
                                f"Hugging Face hub ({type(e).__name__}); use a local MLX model folder or default.") from None
        raise


def quantization_of(model) -> Optional[dict]:
    for _, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return {"bits": int(m.bits), "group_size": int(m.group_size), "mode": getattr(m, "mode", "affine")}
    return None


def set_base_dtype(model, choice: str, full: bool = False) -> str:
    """Apply base_dtype; return the dtype the base computes in. Full fine-tuning trains the base's
    own weights, which a quantized base cannot do: ``auto`` then trains a float32 copy."""
    from mlx_lm.utils import dequantize_model

    quantized = quantization_of(model) is not None
    on_cpu = mx.default_device().type == mx.cpu
    if full and quantized and choice == "keep":
        raise TrainingError("fine_tune_type full trains the base's own weights, which a quantized base cannot do; "
                            "set base_dtype to auto, float32 or bfloat16.")
    if choice == "auto" and full:
        choice = "float32"
    if choice == "keep" or (choice == "auto" and not on_cpu):
        return f"{quantization_of(model)['bits']}-bit" if quantized else _float_dtype(model)
    target = {"auto": mx.float32, "float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[choice]
    if quantized:
        dequantize_model(model)
    model.set_dtype(target)
    return str(target).replace("mlx.core.", "")


def _float_dtype(model) -> str:
    for _, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            return str(p.dtype).replace("mlx.core.", "")
    return "unknown"


def apply_fine_tune_type(model, cfg: dict) -> None:
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    n = cfg["num_layers"]
    if n > len(model.layers):
        raise TrainingError(f"num_layers is {n}, but the model has only {len(model.layers)} layers; "
                            f"set num_layers to at most {len(model.layers)} (or -1 for all).")
    if cfg["fine_tune_type"] == "full":
        for layer in model.layers[-max(n, 0):]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(model, n, cfg["lora_parameters"], use_dora=cfg["fine_tune_type"] == "dora")


def adapter_config(cfg: dict, model_name: str) -> dict:
    """What mlx-lm's load_adapters and fuse read, plus the run's settings for the record."""
    keep = ("fine_tune_type", "num_layers", "lora_parameters", "base_dtype", "max_seq_length",
            "mask_prompt", "learning_rate", "batch_size", "grad_accumulation_steps", "seed")
    out = {k: cfg[k] for k in keep}
    out["model"] = model_name
    return out


def make_optimizer(cfg: dict):
    classes = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "adafactor": optim.Adafactor}
    extra = dict(cfg.get("optimizer_config", {}).get(cfg["optimizer"], {}))
    return classes[cfg["optimizer"]](learning_rate=cfg["learning_rate"], **extra)


# --------------------------------------------------------------- checkpoints


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def read_checkpoint_state(path: Path) -> Optional[dict]:
    """The state of a complete checkpoint, or None if any part is missing or unreadable."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    for name in ("adapters.safetensors", "optimizer.safetensors", "rng.safetensors"):
        if not (path / name).is_file():
            return None
    return state if state.get("complete") else None


def newest_checkpoint(run_dir: Path) -> Optional[tuple[Path, dict]]:
    for path in reversed(list_checkpoints(run_dir)):
        state = read_checkpoint_state(path)
        if state is not None:
            return path, state
    return None


@dataclass
class Position:
    update: int = 0          # optimizer updates done
    epoch: int = 0           # epoch in progress (0-based)
    batch: int = 0           # next micro-batch index within the epoch's order
    trained_tokens: int = 0
    elapsed: float = 0.0     # training seconds over all sessions
    best_val_loss: float = math.inf
    best_step: int = 0       # the update whose adapter is in adapters/
    best_recall: Optional[float] = None


# ------------------------------------------------------------------ the run


@dataclass
class Run:
    ctx: Context
    cfg: dict
    run_dir: Path
    resume: bool = False
    pos: Position = field(default_factory=Position)
    status: str = ""
    train_rows: list = field(default_factory=list)
    eval_rows: list = field(default_factory=list)
    recall_rows: list = field(default_factory=list)
    last_saved_update: int = -1

    # ---- setup
    def prepare(self) -> None:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model_name = resolve_model(cfg["model"])
        data_dir = Path(cfg["data"])
        if not data_dir.is_dir():
            raise TrainingError(f"The data folder {data_dir} does not exist; set data to a folder with train.jsonl and valid.jsonl.")
        train_rows = read_jsonl(data_dir / "train.jsonl")
        if not train_rows:
            raise TrainingError(f"{data_dir / 'train.jsonl'} is missing or empty; add training examples "
                                f"(or run 'farense-tui data split FILE --out {data_dir}').")
        valid_rows = read_jsonl(data_dir / "valid.jsonl")
        if not valid_rows:
            self.ctx.warn(f"{data_dir / 'valid.jsonl'} is missing or empty: no validation, the final adapter is kept as the best.")

        self.ctx.emit(P.State(state="loading", detail=f"loading {self.model_name}"))
        tic = time.perf_counter()
        self.model, self.tokenizer = load_model(self.model_name)
        stored_quant = quantization_of(self.model)
        self.base_dtype = set_base_dtype(self.model, cfg["base_dtype"], cfg["fine_tune_type"] == "full")
        mx.random.seed(cfg["seed"])
        apply_fine_tune_type(self.model, cfg)
        mx.eval(self.model.parameters())
        load_seconds = time.perf_counter() - tic
        total = sum(p.size for _, p in tree_flatten(self.model.parameters()))
        trainable = sum(p.size for _, p in tree_flatten(self.model.trainable_parameters()))
        if quantization_of(self.model) is not None:
            total += _quantized_extra(self.model)
        self.ctx.emit(P.Model(
            path=self.model_name, parameters=int(total), trainable_parameters=int(trainable),
            quantization=stored_quant, base_dtype=self.base_dtype, num_layers=len(self.model.layers),
            fine_tune_type=cfg["fine_tune_type"], load_seconds=round(load_seconds, 3),
        ))

        self.train = tokenize(train_rows, self.tokenizer, cfg["mask_prompt"], "train.jsonl")
        self.valid = tokenize(valid_rows, self.tokenizer, cfg["mask_prompt"], "valid.jsonl")
        if cfg["mask_prompt"]:
            empty = sum(1 for t, o in zip(self.train.tokens, self.train.offsets) if o >= min(len(t), cfg["max_seq_length"]))
            if empty:
                self.ctx.warn(f"{empty} training examples have no answer tokens left after truncation at "
                              f"max_seq_length {cfg['max_seq_length']}; raise max_seq_length.")
        self.pad_multiple = pad_multiple()
        self.updates = batching.bucket_updates(self.train.lengths, cfg["batch_size"], cfg["grad_accumulation_steps"])
        self.batches = [mb for update in self.updates for mb in update]
        self.valid_batches = batching.bucket_batches(self.valid.lengths, cfg["batch_size"])
        self.updates_per_epoch = len(self.updates)
        if cfg["iters"] is not None:
            self.total_updates = int(cfg["iters"])
        else:
            self.total_updates = max(1, round(cfg["epochs"] * self.updates_per_epoch))
        truncated = sum(1 for n in self.train.lengths if n > cfg["max_seq_length"])
        if truncated:
            self.ctx.warn(f"{truncated} of {len(self.train.tokens)} training examples are longer than "
                          f"max_seq_length {cfg['max_seq_length']} and will be truncated.", code="truncation")
        self.ctx.emit(P.Data(
            format=data_format(train_rows[0]), train_samples=len(train_rows), valid_samples=len(valid_rows),
            train_tokens=token_figures(self.train.lengths, cfg["max_seq_length"]),
            valid_tokens=token_figures(self.valid.lengths, cfg["max_seq_length"]),
            truncated=truncated, batches_per_epoch=len(self.batches), updates_per_epoch=self.updates_per_epoch,
            total_updates=self.total_updates,
            padding_efficiency=round(batching.padding_efficiency(
                self.train.lengths, self.batches, cfg["max_seq_length"], self.pad_multiple), 4),
        ))

        self.prepare_probe(data_dir, train_rows)
        self.optimizer = make_optimizer(cfg)
        self.optimizer.init(self.model.trainable_parameters())
        self.value_and_grad = nn.value_and_grad(self.model, summed_loss)
        if cfg["grad_checkpoint"]:
            from mlx_lm.tuner.trainer import grad_checkpoint

            grad_checkpoint(self.model.layers[0])
        self.adapter_config = adapter_config(cfg, self.model_name)
        self.guard = DivergenceGuard(cfg["divergence_factor"], cfg["divergence_patience"])
        self.progress = Progress(self.best_by, cfg["early_stop"])

    def prepare_probe(self, data_dir: Path, train_rows: list[dict]) -> None:
        """``eval_samples`` trained questions and as many paraphrases (when the data folder has
        probe_paraphrase.jsonl), tokenized once."""
        cfg, n = self.cfg, self.cfg["eval_samples"]
        self.probe_items: list[probes.ProbeItem] = []
        self.probe_groups: list[str] = []
        if n and probes.question_answer(train_rows[0]) is not None:
            groups = [("trained", probes.sample_rows(train_rows, n, cfg["seed"]))]
            paraphrases = probes.probe_path(data_dir, "paraphrase")
            if paraphrases.is_file():
                try:
                    groups.append(("paraphrase", probes.sample_rows(probes.read_rows(paraphrases), n, cfg["seed"])))
                except probes.ProbeError as e:
                    self.ctx.warn(f"{e} Recall is measured on the trained questions only.", code="probe")
            for group, rows in groups:
                items = probes.tokenize(rows, self.tokenizer)
                self.probe_items += items
                self.probe_groups += [group] * len(items)
        self.best_by = cfg["best_by"]
        if self.best_by == "recall" and not self.probe_items:
            why = "eval_samples is 0" if not n else "the training data has no answers to recall (text format)"
            self.ctx.warn(f"best_by is recall but {why}: the adapter with the best validation loss is kept instead.",
                          code="probe")
            self.best_by = "val_loss"
        if cfg["early_stop"] and cfg["early_stop"]["metric"] == "recall" and not self.probe_items:
            raise TrainingError("early_stop uses recall, but there is no recall probe (eval_samples is 0 or the data "
                                "is text); set early_stop.metric to val_loss or eval_samples above 0.")

    # ---- resume
    def restore(self) -> Optional[Path]:
        found = newest_checkpoint(self.run_dir)
        if found is None:
            self.ctx.warn(f"No complete checkpoint in {self.run_dir / 'checkpoints'}; starting from the beginning.")
            return None
        path, state = found
        self.model.load_weights(str(path / "adapters.safetensors"), strict=False)
        opt_state = mx.load(str(path / "optimizer.safetensors"))
        self.optimizer.state = tree_unflatten(list(opt_state.items()))
        rng = mx.load(str(path / "rng.safetensors"))["key"]
        mx.random.state[0][...] = rng
        mx.eval(self.model.parameters(), self.optimizer.state, mx.random.state)
        self.pos = Position(
            update=state["update"], epoch=state["epoch"], batch=state["batch"],
            trained_tokens=state["trained_tokens"], elapsed=state["elapsed"],
            best_val_loss=state["best_val_loss"] if state["best_val_loss"] is not None else math.inf,
            best_step=state["best_step"], best_recall=state.get("best_recall"),
        )
        if "progress" in state:  # checkpoints of earlier versions hold no judges: they start afresh
            self.progress = Progress(self.best_by, self.cfg["early_stop"], state["progress"])
            self.guard = DivergenceGuard(self.cfg["divergence_factor"], self.cfg["divergence_patience"],
                                         state["guard"])
        self._load_metrics_until(self.pos.update)
        return path

    def _load_metrics_until(self, update: int) -> None:
        """Metrics written after the checkpoint belong to work that is being redone."""
        path = self.run_dir / "metrics.csv"
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= update]
        for r in rows:
            row = {k: (float(v) if v not in ("", None) else None) for k, v in r.items()}
            row["step"], row["epoch"] = int(row["step"]), int(row["epoch"])
            if row.get("loss") is not None:
                self.train_rows.append(row)
            if row.get("val_loss") is not None:
                self.eval_rows.append({"step": row["step"], "epoch": row["epoch"], "val_loss": row["val_loss"]})
            if row.get("recall") is not None:
                self.recall_rows.append({"step": row["step"], "epoch": row["epoch"], "recall": row["recall"],
                                         "token_accuracy": row["token_accuracy"]})
        self._rewrite_metrics_csv()

    # ---- files
    def _rewrite_metrics_csv(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        w.writeheader()
        by_step = {r["step"]: dict(r) for r in self.train_rows}
        for e in self.eval_rows + self.recall_rows:
            by_step.setdefault(e["step"], {"step": e["step"], "epoch": e["epoch"]}).update(e)
        for step in sorted(by_step):
            w.writerow(by_step[step])
        C.atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())

    def _append_metrics(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def _write_metrics_json(self) -> None:
        C.atomic_write_text(self.run_dir / "training_metrics.json",
                            json.dumps({"train": self.train_rows, "eval": self.eval_rows, "recall": self.recall_rows},
                                       indent=1))

    def trainable_weights(self) -> dict:
        return dict(tree_flatten(self.model.trainable_parameters()))

    def weights_finite(self) -> bool:
        return all(bool(mx.all(mx.isfinite(w)).item()) for w in self.trainable_weights().values())

    def save_checkpoint(self, reason: str) -> Path:
        if not self.weights_finite():  # never leave a broken model as the newest checkpoint
            raise Diverged(f"the weights stopped being finite by update {self.pos.update}",
                           self.guard.first_bad if self.guard.streak else None)
        folder = self.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{CHECKPOINT_PREFIX}{self.pos.update:06d}"
        tmp = folder / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _save_safetensors(tmp / "adapters.safetensors", self.trainable_weights())
        _save_safetensors(tmp / "optimizer.safetensors", dict(tree_flatten(self.optimizer.state)))
        _save_safetensors(tmp / "rng.safetensors", {"key": mx.random.state[0]})
        (tmp / "adapter_config.json").write_text(json.dumps(self.adapter_config, indent=2))
        p = self.pos
        state = {
            "complete": True, "update": p.update, "epoch": p.epoch, "batch": p.batch,
            "trained_tokens": p.trained_tokens, "elapsed": p.elapsed,
            "best_val_loss": None if math.isinf(p.best_val_loss) else p.best_val_loss,
            "best_step": p.best_step, "best_recall": p.best_recall, "total_updates": self.total_updates,
            "reason": reason, "seed": self.cfg["seed"], "saved_at": time.time(),
            "progress": self.progress.state(), "guard": self.guard.state(),
        }
        with open(tmp / STATE_FILE, "w") as f:  # written last: marks the checkpoint complete
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same update (e.g. stop right after a periodic save)
            old = folder / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(folder)
        self._write_metrics_json()
        self._prune_checkpoints()
        self.last_saved_update = p.update
        self.ctx.emit(P.Checkpoint(step=p.update, epoch=p.epoch + 1, path=str(final), reason=reason))
        return final

    def _prune_checkpoints(self) -> None:
        keep = self.cfg["keep_checkpoints"]
        if keep <= 0:
            return
        for path in list_checkpoints(self.run_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)

    # ---- evaluation
    def evaluate(self) -> Optional[float]:
        if not self.valid_batches:
            return None
        order = batching.epoch_order(len(self.valid_batches), self.cfg["seed"], 0, batching.VALID_STREAM)
        if self.cfg["val_batches"] != -1:
            order = order[: self.cfg["val_batches"]]
        self.model.eval()
        total = mx.array(0.0)
        ntoks = mx.array(0.0)
        for b in order:
            inputs, targets, mask = make_batch(self.valid, self.valid_batches[b], self.cfg["max_seq_length"],
                                               self.pad_multiple)
            loss, n = summed_loss(self.model, inputs, targets, mask)
            total = total + loss
            ntoks = ntoks + n
            mx.eval(total, ntoks)
        self.model.train()
        n = ntoks.item()
        return total.item() / n if n else None

    # ---- the loop
    def micro_batches(self):
        """(epoch, batch position, indices, ends its update) from the current position onwards, forever."""
        epoch, b = self.pos.epoch, self.pos.batch
        while True:
            order = batching.epoch_micro_batches(self.updates, self.cfg["seed"], epoch)
            while b < len(order):
                yield epoch, b, *order[b]
                b += 1
            epoch, b = epoch + 1, 0

    def handle_commands(self) -> Optional[str]:
        """Act on commands that arrived; return 'stop' when the run must end."""
        while (cmd := self.ctx.poll()) is not None:
            if isinstance(cmd, (P.Stop, P.Shutdown)):
                return "stop"
            if isinstance(cmd, P.Pause):
                self.ctx.emit(P.State(state="paused", detail=f"paused at update {self.pos.update}"))
                while True:
                    nxt = self.ctx.wait()
                    if isinstance(nxt, (P.Stop, P.Shutdown)):
                        return "stop"
                    if isinstance(nxt, P.Resume):
                        self.ctx.emit(P.State(state="training", detail="resumed"))
                        break
                    if nxt is not None and not isinstance(nxt, P.Pause):
                        self.ctx.warn(f"The engine is training; a {nxt.type} command cannot run now.", code="busy")
            elif isinstance(cmd, P.Resume):
                continue
            else:
                self.ctx.warn(f"The engine is training; a {cmd.type} command cannot run now.", code="busy")
        if self.ctx.stop_requested.is_set():
            return "stop"
        return None

    def check_memory(self, mem: P.Memory) -> Optional[str]:
        avail_gb = mem.system_available / GB
        every = self.cfg["clear_cache_every"]
        guard = self.cfg["memory_guard_gb"]
        if guard and avail_gb < guard:
            mx.clear_cache()
            self.ctx.emit(P.MemoryEvent(memory=memory_snapshot(), action="guard", step=self.pos.update))
            self.ctx.warn(f"System memory available fell to {avail_gb:.2f} GB, under the guard of {guard} GB: "
                          f"checkpointing and stopping; free memory or lower batch_size/max_seq_length, then resume.",
                          code="memory_guard")
            return "memory_guard"
        if avail_gb < self.cfg["low_memory_gb"]:
            mx.clear_cache()
            self.ctx.emit(P.MemoryEvent(memory=memory_snapshot(), action="cleared_cache", step=self.pos.update))
        elif every and self.pos.update % every == 0:
            mx.clear_cache()
        return None

    def compile_steps(self) -> None:
        """Built after a resume, which replaces the optimizer state the compiled closure captures."""
        self.step = compiled_step(self.model, self.optimizer, self.value_and_grad)

    def loop(self) -> str:
        try:
            return self._loop()
        except Diverged as e:
            return self.diverged(str(e), e.first_bad)

    def diverged(self, why: str, first_bad: Optional[int]) -> str:
        """Remove the checkpoints written while the run diverged; say what to change. The loss of update
        ``first_bad`` is computed with the weights after update ``first_bad - 1``: those went wrong."""
        if first_bad is not None:
            for path in list_checkpoints(self.run_dir):
                if int(path.name[len(CHECKPOINT_PREFIX):]) >= first_bad - 1:
                    shutil.rmtree(path, ignore_errors=True)
        newest = newest_checkpoint(self.run_dir)
        then = (f"the newest checkpoint, {newest[0].name}, is from before it: resume from it with the changed "
                f"config, or start again" if newest else "start again")
        self.ctx.emit(P.Advice(code="diverged", step=self.pos.update, message=(
            f"Training diverged: {why}. Lower learning_rate (the rate was {float(self.optimizer.learning_rate):.3g} "
            f"when it did) or raise warmup_steps (now {self.cfg['warmup_steps']}); {then}.")))
        return "diverged"

    def _loop(self) -> str:
        self.compile_steps()
        cfg = self.cfg
        window: deque = deque(maxlen=10)
        session_start_elapsed = self.pos.elapsed
        session_updates = 0
        stream = self.micro_batches()
        self.model.train()
        self.ctx.emit(P.State(state="training", detail=f"update {self.pos.update}/{self.total_updates}"))
        while self.pos.update < self.total_updates:
            if (why := self.handle_commands()) is not None:
                return why
            tic = time.perf_counter()
            update = self.pos.update + 1
            lr = learning_rate_at(update, cfg, self.total_updates)
            self.optimizer.learning_rate = lr
            grads, loss_sum, ntoks = None, None, None
            epoch = self.pos.epoch
            # the micro-batches of this update (fewer in the epoch's last)
            while True:
                _, b, idx, last = next(stream)
                inputs, targets, mask = make_batch(self.train, idx, cfg["max_seq_length"], self.pad_multiple)
                loss_sum, ntoks, grads = self.step(inputs, targets, mask, loss_sum, ntoks, grads, last)
                self.pos.batch = b + 1
                if last:
                    break
                mx.eval(loss_sum, ntoks, grads)  # keep the graph from growing across micro-batches
            mx.eval(self.model.state, self.optimizer.state, mx.random.state, loss_sum, ntoks)
            total_tokens = max(ntoks.item(), 1.0)
            if self.pos.batch >= len(self.batches):
                epoch_done = True
                self.pos.epoch, self.pos.batch = epoch + 1, 0
            else:
                epoch_done = False
            dt = time.perf_counter() - tic
            loss = loss_sum.item() / total_tokens
            tokens = int(total_tokens)
            self.pos.update = update
            self.pos.trained_tokens += tokens
            self.pos.elapsed += dt
            session_updates += 1
            window.append((tokens, dt))
            wt = sum(t for t, _ in window)
            ws = sum(s for _, s in window) or 1e-9
            session_time = self.pos.elapsed - session_start_elapsed
            eta = (self.total_updates - update) * (session_time / session_updates)
            mem = memory_snapshot()
            step = P.Step(
                step=update, total_steps=self.total_updates, epoch=epoch + 1,
                epoch_progress=(self.pos.batch if not epoch_done else len(self.batches)) / len(self.batches),
                loss=loss, learning_rate=lr, tokens=tokens, trained_tokens=self.pos.trained_tokens,
                tokens_per_second=wt / ws, iterations_per_second=len(window) / ws,
                elapsed=self.pos.elapsed, eta=eta, memory=mem,
            )
            self.ctx.emit(step)
            row = {"step": update, "epoch": epoch + 1, "loss": loss, "learning_rate": lr, "tokens": tokens,
                   "trained_tokens": self.pos.trained_tokens, "tokens_per_second": step.tokens_per_second,
                   "iterations_per_second": step.iterations_per_second, "elapsed": self.pos.elapsed,
                   "mlx_active": mem.mlx_active, "mlx_peak": mem.mlx_peak, "rss": mem.rss,
                   "system_available": mem.system_available}
            if (why := self.guard.update(update, loss)) is not None:
                self.train_rows.append(row)
                self._append_metrics(row)
                raise Diverged(why, self.guard.first_bad)
            stop = None
            if update % cfg["steps_per_eval"] == 0 or update == self.total_updates:
                stop = self.run_eval(epoch + 1, row)
            self.train_rows.append({k: row[k] for k in row if k not in ("val_loss", "recall", "token_accuracy")})
            self._append_metrics(row)
            if update % cfg["save_every"] == 0 or epoch_done or stop:
                self.save_checkpoint("epoch_end" if epoch_done else "periodic")
            if stop:
                self.ctx.emit(P.Advice(code="early_stop", step=update, message=(
                    f"Stopping early at update {update}: {stop}. The best adapter (update {self.pos.best_step}) is "
                    f"in adapters/.")))
                return "early_stopped"
            if (why := self.check_memory(mem)) is not None:
                return why
        return "completed"

    def measure_recall(self) -> Optional[tuple[probes.Recall, dict]]:
        """Teacher-forced recall over the probe, and per group (trained, paraphrase)."""
        if not self.probe_items:
            return None
        self.model.eval()
        result = probes.teacher_forced(self.model, self.probe_items, self.cfg["batch_size"])
        self.model.train()
        parts = {}
        for group in ("trained", "paraphrase"):
            hits = [ok for ok, g in zip(result.exact, self.probe_groups) if g == group]
            parts[group] = sum(hits) / len(hits) if hits else None
        return result, parts

    def run_eval(self, epoch: int, row: dict) -> Optional[str]:
        """Validation loss and recall; keep the best adapter; advise. Returns why to stop early, if so."""
        tic = time.perf_counter()
        val_loss = self.evaluate()
        val_time = time.perf_counter() - tic
        tic = time.perf_counter()
        measured = self.measure_recall()
        recall_time = time.perf_counter() - tic
        if val_loss is None and measured is None:
            return None
        step = self.pos.update
        rec = measured[0] if measured else None
        verdict = self.progress.update(Validation(step, val_loss, rec.recall if rec else None,
                                                  rec.token_accuracy if rec else None))
        if verdict.is_best:
            self.pos.best_step = step
            save_adapter(self.run_dir / "adapters", self.trainable_weights(), self.adapter_config)
        if val_loss is not None:
            val_best = val_loss < self.pos.best_val_loss
            self.pos.best_val_loss = min(self.pos.best_val_loss, val_loss)
            row["val_loss"] = val_loss
            self.eval_rows.append({"step": step, "epoch": epoch, "val_loss": val_loss})
            self.ctx.emit(P.Eval(step=step, epoch=epoch, val_loss=val_loss, val_time=val_time,
                                 best_val_loss=self.pos.best_val_loss, is_best=val_best))
        if rec is not None:
            self.pos.best_recall = max(self.pos.best_recall or 0.0, rec.recall)
            row["recall"], row["token_accuracy"] = rec.recall, rec.token_accuracy
            self.recall_rows.append({"step": step, "epoch": epoch, "recall": rec.recall,
                                     "token_accuracy": rec.token_accuracy})
            parts = measured[1]
            self.ctx.emit(P.Recall(step=step, epoch=epoch, recall=rec.recall, token_accuracy=rec.token_accuracy,
                                   samples=len(rec.exact), eval_time=recall_time, trained=parts["trained"],
                                   paraphrase=parts["paraphrase"], best_recall=self.pos.best_recall,
                                   is_best=verdict.is_best and self.best_by == "recall"))
        for code, message in verdict.advice:
            self.ctx.emit(P.Advice(code=code, message=message, step=step))
        return verdict.stop

    def summary(self, status: str) -> dict:
        p = self.pos
        return {
            "status": status, "run_dir": str(self.run_dir), "model": self.model_name,
            "updates": p.update, "total_updates": self.total_updates, "epochs_completed": p.epoch,
            "trained_tokens": p.trained_tokens, "elapsed": round(p.elapsed, 3),
            "tokens_per_second": (p.trained_tokens / p.elapsed) if p.elapsed else 0.0,
            "final_loss": self.train_rows[-1]["loss"] if self.train_rows else None,
            "best_val_loss": None if math.isinf(p.best_val_loss) else p.best_val_loss,
            "best_recall": p.best_recall, "best_by": self.best_by,
            "best_step": p.best_step, "peak_memory": int(mx.get_peak_memory()),
            "adapters": str(self.run_dir / "adapters"), "final": str(self.run_dir / "final"),
        }

    def finish(self, status: str) -> dict:
        if status in P.Done.FINISHED:
            save_adapter(self.run_dir / "final", self.trainable_weights(), self.adapter_config)
            if not (self.run_dir / "adapters" / "adapters.safetensors").exists():
                self.pos.best_step = self.pos.update
                save_adapter(self.run_dir / "adapters", self.trainable_weights(), self.adapter_config)
        if status != "diverged" and self.last_saved_update != self.pos.update:
            try:
                self.save_checkpoint({"completed": "final", "early_stopped": "final",
                                      "memory_guard": "memory_guard"}.get(status, "stop"))
            except Diverged as e:
                status = self.diverged(str(e), None)
        summary = self.summary(status)
        C.atomic_write_text(self.run_dir / "training_summary.json", json.dumps(summary, indent=2))
        self._write_metrics_json()
        return summary


def _quantized_extra(model) -> int:
    """Packed quantized weights count fewer elements than the parameters they hold."""
    extra = 0
    for _, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            extra += m.weight.size * (32 // m.bits) - m.weight.size - m.scales.size - m.biases.size
    return extra


# ------------------------------------------------------------------ entry


def train(ctx: Context, cfg_raw: dict, run_dir: str | Path, resume: bool = False) -> P.Done:
    """Run (or resume) a training run, writing the run folder. Returns the done event it emitted."""
    run_dir = Path(run_dir)
    events_file = None
    try:
        if resume:
            saved = run_dir / "config.yaml"
            if not cfg_raw and saved.exists():
                cfg_raw = C.load_yaml(saved)
            if not saved.exists() and newest_checkpoint(run_dir) is None:
                raise TrainingError(f"{run_dir} holds no run to resume; start a new run or pick another folder.")
        cfg, notes = C.validate(cfg_raw)
        if resume and (run_dir / "config.yaml").exists():
            notes += resume_differences(C.validate(C.load_yaml(run_dir / "config.yaml"))[0], cfg)
        if not resume and newest_checkpoint(run_dir) is not None:
            raise TrainingError(f"{run_dir} already holds a run with checkpoints; resume it or choose a new run folder.")
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_interrupted_writes(run_dir)
        events_file = open(run_dir / "events.jsonl", "a", encoding="utf-8")
        ctx.tee(events_file)
        for note in notes:
            ctx.warn(note, code="ignored_key")
        C.save_yaml(cfg, run_dir / "config.yaml")
        newest = newest_checkpoint(run_dir)
        if not resume:
            _clear_previous_outputs(run_dir)
        ctx.emit(P.Config(config=cfg, run_dir=str(run_dir),
                          resumed_from=str(newest[0]) if resume and newest else None))
        run = Run(ctx, cfg, run_dir, resume)
        run.prepare()
        if resume:
            run.restore()
        status = run.loop()
        if status == "stop":
            status = "stopped"
        summary = run.finish(status)
        done = P.Done(status=summary["status"], summary=summary)
    except (TrainingError, C.ConfigError) as e:
        ctx.emit(P.Error(message=str(e), code="input"))
        done = P.Done(status="failed", summary={"error": str(e)})
    except Exception as e:  # noqa: BLE001 - shown whole, never swallowed
        import traceback

        ctx.emit(P.Error(message=f"Training failed: {type(e).__name__}: {e}", traceback=traceback.format_exc()))
        done = P.Done(status="failed", summary={"error": f"{type(e).__name__}: {e}"})
    ctx.emit(done)
    if events_file is not None:
        ctx.tee(None)
        events_file.close()
    return done


# settings that decide the data order, the position in it or the trained weights' shapes
ORDER_KEYS = ("data", "batch_size", "grad_accumulation_steps", "seed", "max_seq_length", "mask_prompt",
              "model", "fine_tune_type", "num_layers", "lora_parameters")


def resume_differences(saved: dict, now: dict) -> list[str]:
    """Warnings for a resume whose config changes what the checkpoint's position means."""
    return [f"{k} was {saved[k]!r} in this run and is {now[k]!r} now: the resumed run will not match an "
            f"uninterrupted one; resume with the run's own config.yaml for an exact continuation."
            for k in ORDER_KEYS if saved.get(k) != now.get(k)]


def _remove_interrupted_writes(run_dir: Path) -> None:
    """Half-written checkpoints of a killed process never got their final name: drop them."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return
    for old in folder.glob(".old-*"):  # killed between the two renames of a re-save: put it back
        name = old.name[len(".old-"):].rsplit("-", 1)[0]
        if not (folder / name).exists():
            os.replace(old, folder / name)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _clear_previous_outputs(run_dir: Path) -> None:
    """A fresh (not resumed) run in a used folder starts its metrics anew; events.jsonl keeps history."""
    for name in ("metrics.csv", "training_metrics.json", "training_summary.json"):
        (run_dir / name).unlink(missing_ok=True)


@handles(P.Train)
def handle_train(ctx: Context, cmd: P.Train) -> None:
    train(ctx, cmd.config, cmd.run_dir, cmd.resume)
