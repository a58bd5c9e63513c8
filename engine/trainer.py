"""The training run: LoRA / DoRA / full fine-tuning with exact resume, and its engine handler.

The parts it stands on are shared: ``engine.model`` prepares the model, ``engine.step`` holds the
compiled update over length-bucketed micro-batches, ``engine.checkpoints`` writes and restores
checkpoints and the metrics files, ``farense_core.rundir`` says where everything goes. This module
is the loop: updates, validation, checkpoints, pause/stop, memory, and the judges.

At every validation, besides the validation loss, one forward pass over the probe (trained
questions and their paraphrases, ``engine.recall``) gives teacher-forced recall: what share of
answers greedy decoding would reproduce exactly. ``best_by`` picks the adapter kept in
``adapters/`` by it (or by validation loss), ``early_stop`` ends a run that stopped improving, and
``farense_core.health`` stops a diverging one, removing the checkpoints written while it diverged.
Checkpoints keep the judges' state, and a model whose weights are no longer finite is never written.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import psutil

from farense_core import batching
from farense_core import config as C
from farense_core import protocol as P
from farense_core.datafiles import TRAIN_FILE, VALID_FILE, DataError, read_examples, sample_format
from farense_core.health import DivergenceGuard, Progress, Validation
from farense_core.models import resolve_model
from farense_core.rundir import (STATE_FILE, RunDir, RunFolderError, RunLock, RunLocked, check_run_folder,
                                 checkpoint_problem, checkpoint_update, is_adapter_folder)
from farense_core.schedule import learning_rate_at, warmup_problem

from . import checkpoints as ckpt
from . import dequant
from . import distributed
from . import frozen
from .awake import keep_awake, let_sleep
from .priority import yield_cpu
from . import recall as probes
from .datatools import length_stats
from .model import InputError, adapter_config, parameter_counts, prepare, trainable_weights, weights_finite
from .server import Context, handles
from .split import training_loss
from .step import compiled_step, make_batch, make_optimizer, optimizer_settings, pad_multiple, summed_loss, tokenize

GB = 1024 ** 3


class Diverged(Exception):
    """The run diverged; the message says what happened, ``first_bad`` since which update."""

    def __init__(self, message: str, first_bad: Optional[int] = None):
        super().__init__(message)
        self.first_bad = first_bad


_PROCESS = psutil.Process()


def memory_snapshot() -> P.Memory:
    vm = psutil.virtual_memory()
    return P.Memory(
        mlx_active=int(mx.get_active_memory()), mlx_cache=int(mx.get_cache_memory()),
        mlx_peak=int(mx.get_peak_memory()), rss=int(_PROCESS.memory_info().rss),
        system_available=int(vm.available), system_total=int(vm.total),
    )


def token_figures(lengths: list[int], max_seq_length: int) -> dict:
    if not lengths:
        return {}
    st = length_stats(lengths, max_seq_length)
    return {"min": st.min, "max": st.max, "mean": st.mean, "median": st.median, "p95": st.p95,
            "total": sum(lengths)}


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

    @property
    def last_epoch(self) -> int:
        """The epoch (1-based) the last update trained on: the one in progress, or the one just finished."""
        return self.epoch + 1 if self.batch or not self.epoch else self.epoch

    def state(self) -> dict:
        return {"update": self.update, "epoch": self.epoch, "batch": self.batch,
                "trained_tokens": self.trained_tokens, "elapsed": self.elapsed,
                "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
                "best_step": self.best_step, "best_recall": self.best_recall}

    @classmethod
    def of(cls, state: dict) -> "Position":
        return cls(update=state["update"], epoch=state["epoch"], batch=state["batch"],
                   trained_tokens=state["trained_tokens"], elapsed=state["elapsed"],
                   best_val_loss=math.inf if state["best_val_loss"] is None else state["best_val_loss"],
                   best_step=state["best_step"], best_recall=state.get("best_recall"))


@dataclass
class Run:
    ctx: Context
    cfg: dict
    rd: RunDir
    resume: bool = False
    pos: Position = field(default_factory=Position)
    last_saved_update: int = -1
    world: distributed.World = field(default_factory=distributed.world)

    # ---- setup
    def prepare(self) -> None:
        cfg = self.cfg
        self.metrics = ckpt.Metrics(self.rd)
        optimizer_settings(cfg)  # wrong settings named before minutes of loading
        if problem := batching.share_problem(cfg["batch_size"], self.world.size):
            raise InputError(problem)
        self.model_name = resolve_model(cfg["model"])
        data_dir = Path(cfg["data"])
        if not data_dir.is_dir():
            raise InputError(f"The data folder {data_dir} does not exist; set data to a folder with {TRAIN_FILE} "
                             f"and {VALID_FILE}.")
        train_rows = read_examples(data_dir / TRAIN_FILE, required=False)
        if not train_rows:
            raise InputError(f"{data_dir / TRAIN_FILE} is missing or empty; add training examples "
                             f"(or run 'farense-tui data split FILE --out {data_dir}').")
        valid_rows = read_examples(data_dir / VALID_FILE, required=False)
        if not valid_rows:
            self.ctx.warn(f"{data_dir / VALID_FILE} is missing or empty: no validation, the final adapter is kept "
                          f"as the best.")

        self.ctx.emit(P.State(state="loading", detail=f"loading {self.model_name}"))
        tic = time.perf_counter()
        self.model, self.tokenizer, stored_quant, self.base_dtype = prepare(self.model_name, cfg)
        matmuls = dequant.apply(self.model, cfg["dequant_matmul"], self.base_dtype)
        total, trainable = parameter_counts(self.model)
        self.ctx.emit(P.Model(
            path=self.model_name, parameters=total, trainable_parameters=trainable,
            quantization=stored_quant, base_dtype=self.base_dtype, num_layers=len(self.model.layers),
            fine_tune_type=cfg["fine_tune_type"], load_seconds=round(time.perf_counter() - tic, 3),
        ))
        self.ctx.emit(P.Log(message=f"Quantized matmuls: {matmuls}."))

        self.train = tokenize(train_rows, self.tokenizer, cfg["mask_prompt"])
        self.valid = tokenize(valid_rows, self.tokenizer, cfg["mask_prompt"])
        if cfg["mask_prompt"]:
            empty = sum(1 for t, o in zip(self.train.tokens, self.train.offsets) if o >= min(len(t), cfg["max_seq_length"]))
            if empty:
                self.ctx.warn(f"{empty} training examples have no answer tokens left after truncation at "
                              f"max_seq_length {cfg['max_seq_length']}; raise max_seq_length.")
        self.pad_multiple = pad_multiple()
        self.updates = batching.bucket_updates(self.train.lengths, cfg["batch_size"], cfg["grad_accumulation_steps"])
        self.batches = [mb for update in self.updates for mb in update]
        self.valid_batches = batching.bucket_batches(self.valid.lengths, cfg["batch_size"])
        self.updates_per_epoch, self.total_updates = batching.updates_planned(cfg, len(train_rows))
        if problem := warmup_problem(cfg, self.total_updates):
            self.ctx.warn(problem, code="schedule")
        truncated = sum(1 for n in self.train.lengths if n > cfg["max_seq_length"])
        if truncated:
            self.ctx.warn(f"{truncated} of {len(self.train.tokens)} training examples are longer than "
                          f"max_seq_length {cfg['max_seq_length']} and will be truncated.", code="truncation")
        self.ctx.emit(P.Data(
            format=sample_format(train_rows[0]), train_samples=len(train_rows), valid_samples=len(valid_rows),
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
        k = frozen.frozen_blocks(self.model, cfg)
        loss, self.split, whole = training_loss(self.model, k, self.train.tokens[0])
        self.ctx.emit(P.Log(message=f"Loss computed whole: {whole}." if whole else
                            "Loss computed in chunks over the vocabulary."))
        self.frozen_cache = self.prepare_frozen_cache(k, None if self.split else whole)
        if self.frozen_cache:
            loss = self.split.loss
        self.value_and_grad = nn.value_and_grad(self.model, loss)
        if cfg["grad_checkpoint"]:
            from mlx_lm.tuner.trainer import grad_checkpoint

            grad_checkpoint(self.model.layers[0])
        self.adapter_config = adapter_config(cfg, self.model_name)
        self.guard = DivergenceGuard(cfg["divergence_factor"], cfg["divergence_patience"])
        self.progress = Progress(self.best_by, cfg["early_stop"])

    def prepare_frozen_cache(self, k: int, problem: Optional[str]) -> Optional[frozen.Cache]:
        """The frozen-block cache (``engine.frozen``) above the ``k`` frozen blocks when ``frozen_cache``
        and the run allow it (``problem``: why the model cannot be split); a log line says whether it is on
        and why."""
        cfg = self.cfg
        repeats = self.total_updates > self.updates_per_epoch
        if problem and k and repeats and cfg["frozen_cache"] != "off":
            self.ctx.emit(P.Log(message=f"Frozen-block cache off: {problem}."))
            return None
        rows = [(len(self.world.share(mb)) or 1,
                 batching.padded_length(max(min(self.train.lengths[i], cfg["max_seq_length"]) for i in mb),
                                        cfg["max_seq_length"], self.pad_multiple) - 1) for mb in self.batches]
        size = frozen.expected_bytes(self.model, rows) if k and not problem else 0
        on, why = frozen.decide(cfg["frozen_cache"], k, repeats, size, psutil.virtual_memory().available)
        self.ctx.emit(P.Log(message=f"Frozen-block cache {why}."))
        return frozen.Cache(self.split) if on else None

    def prepare_probe(self, data_dir: Path, train_rows: list[dict]) -> None:
        """``eval_samples`` trained questions and as many paraphrases (when the data folder has
        probe_paraphrase.jsonl), tokenized once."""
        cfg, n = self.cfg, self.cfg["eval_samples"]
        self.probe_items: list[probes.ProbeItem] = []
        self.probe_groups: list[str] = []
        if n and sample_format(train_rows[0]) != "text":
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
            raise InputError("early_stop uses recall, but there is no recall probe (eval_samples is 0 or the data "
                             "is text); set early_stop.metric to val_loss or eval_samples above 0.")

    # ---- resume
    def restore(self, from_update: Optional[int] = None) -> Optional[Path]:
        """Load the newest intact checkpoint (or that of ``from_update``): checksums compared, then a
        trial load. Damaged newer ones are set aside (renamed, never deleted) and named in a warning;
        so are the newer ones a resume from an older checkpoint leaves behind."""
        rd = self.rd
        if from_update is not None:
            candidates = [rd.checkpoint(from_update)]
            if not candidates[0].is_dir():
                have = ", ".join(str(checkpoint_update(p)) for p in rd.list_checkpoints()) or "none"
                raise InputError(f"{rd.checkpoints} has no checkpoint of update {from_update} (it has: {have}); "
                                 f"pick one of those with --from-checkpoint.")
        else:
            candidates = list(reversed(rd.list_checkpoints()))
        damaged, chosen = [], None
        for path in candidates:
            problem = checkpoint_problem(path, hashes=True)
            if problem is None:
                try:
                    state = json.loads((path / STATE_FILE).read_text())
                    pos = Position.of(state)
                    ckpt.load_checkpoint(path, self.model, self.optimizer)
                except ckpt.CheckpointLoadError as e:
                    problem = str(e)
                except (KeyError, TypeError, ValueError) as e:
                    problem = f"its {STATE_FILE} holds no valid position ({type(e).__name__}: {e})"
            if problem is None:
                chosen = path
                break
            damaged.append((path, problem))
        if chosen is None:
            if from_update is not None:
                raise InputError(f"The checkpoint {candidates[0]} is damaged: {damaged[0][1]}; pick another with "
                                 f"--from-checkpoint, or resume from the newest intact one.")
            if damaged:
                listing = "; ".join(f"{p.name}: {why}" for p, why in damaged)
                raise InputError(f"No intact checkpoint in {rd.checkpoints} ({listing}); start the run again in a "
                                 f"new folder.")
            self.ctx.warn(f"No complete checkpoint in {rd.checkpoints}; starting from the beginning.")
            return None
        for path, problem in damaged:
            aside = rd.set_aside(path, "damaged")
            self.ctx.warn(f"The checkpoint {path.name} is damaged: {problem}. It is set aside as {aside.name}; "
                          f"resuming from {chosen.name} instead.", code="damaged_checkpoint")
        newer = [p for p in rd.list_checkpoints() if checkpoint_update(p) > checkpoint_update(chosen)]
        for path in newer:
            aside = rd.set_aside(path, "abandoned")
            self.ctx.warn(f"Resuming from {chosen.name}, so the later checkpoint {path.name} is set aside as "
                          f"{aside.name} (delete it when you no longer need it).", code="abandoned_checkpoint")
        if "epoch_updates" in state:  # in micro-batches of this run's split (a resume may split updates finer)
            pos.batch = batching.micro_batches_before(self.updates, self.cfg["seed"], pos.epoch,
                                                      int(state["epoch_updates"]))
        self.pos = pos
        if "progress" in state:  # checkpoints of earlier versions hold no judges: they start afresh
            self.progress = Progress(self.best_by, self.cfg["early_stop"], state["progress"])
            self.guard = DivergenceGuard(self.cfg["divergence_factor"], self.cfg["divergence_patience"],
                                         state["guard"])
        self.metrics.load_until(self.pos.update)
        return chosen

    def sync_from_leader(self) -> None:
        """Every process of a shared run starts from the leader's weights, optimizer state and position
        (a resume restores on the leader only; LoRA's random start is the leader's too)."""
        w = self.world
        if not w.shared:
            return
        self.model.update(w.send_tree(self.model.trainable_parameters()))
        self.optimizer.state = w.send_tree(self.optimizer.state)
        mx.eval(self.model.trainable_parameters(), self.optimizer.state)
        state = w.send_json(self.pos.state())
        if not w.leader:
            self.pos = Position.of(state)

    # ---- checkpoints
    def save_checkpoint(self, reason: str) -> Path:
        if not weights_finite(self.model):  # never leave a broken model as the newest checkpoint
            raise Diverged(f"the weights stopped being finite by update {self.pos.update}",
                           self.guard.first_bad if self.guard.streak else None)
        done_in_epoch = batching.updates_before(self.updates, self.cfg["seed"], self.pos.epoch, self.pos.batch)
        state = {**self.pos.state(), "epoch_updates": done_in_epoch, "total_updates": self.total_updates,
                 "reason": reason, "seed": self.cfg["seed"], "saved_at": time.time(),
                 "progress": self.progress.state(), "guard": self.guard.state(), "config": self.cfg}  # a resume can go on even if config.yaml is gone
        path = ckpt.write_checkpoint(self.rd, self.pos.update, trainable_weights(self.model), self.optimizer.state,
                                     self.adapter_config, state)
        self.metrics.write_json()
        ckpt.prune(self.rd, self.cfg["keep_checkpoints"])
        self.last_saved_update = self.pos.update
        self.ctx.emit(P.Checkpoint(step=self.pos.update, epoch=self.pos.last_epoch, path=str(path), reason=reason))
        return path

    def save_adapter(self, folder: Path) -> None:
        ckpt.save_adapter(folder, trainable_weights(self.model), self.adapter_config)

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

    def measure_recall(self) -> Optional[tuple[probes.Recall, dict]]:
        """Teacher-forced recall over the probe, and per group (trained, paraphrase)."""
        if not self.probe_items:
            return None
        self.model.eval()
        # no more positions per pass than a training micro-batch: probe answers can be longer than
        # max_seq_length, and a pass over batch_size of them once took 2.5x the training step's memory
        result = probes.teacher_forced(self.model, self.probe_items, self.cfg["batch_size"],
                                       self.cfg["batch_size"] * self.cfg["max_seq_length"])
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
            self.save_adapter(self.rd.best)
        if val_loss is not None:
            val_best = val_loss < self.pos.best_val_loss
            self.pos.best_val_loss = min(self.pos.best_val_loss, val_loss)
            row["val_loss"] = val_loss
            self.ctx.emit(P.Eval(step=step, epoch=epoch, val_loss=val_loss, val_time=val_time,
                                 best_val_loss=self.pos.best_val_loss, is_best=val_best))
        if rec is not None:
            self.pos.best_recall = max(self.pos.best_recall or 0.0, rec.recall)
            row["recall"], row["token_accuracy"] = rec.recall, rec.token_accuracy
            parts = measured[1]
            self.ctx.emit(P.Recall(step=step, epoch=epoch, recall=rec.recall, token_accuracy=rec.token_accuracy,
                                   samples=len(rec.exact), eval_time=recall_time, trained=parts["trained"],
                                   paraphrase=parts["paraphrase"], best_recall=self.pos.best_recall,
                                   is_best=verdict.is_best and self.best_by == "recall"))
        for code, message in verdict.advice:
            self.ctx.emit(P.Advice(code=code, message=message, step=step))
        return verdict.stop

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
                        self.ctx.refuse(nxt, "training")
            elif not isinstance(cmd, P.Resume):
                self.ctx.refuse(cmd, "training")
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

    def loop(self) -> str:
        try:
            status = self._loop()
        except Diverged as e:
            status = self.diverged(str(e), e.first_bad)
        except ckpt.DiskFull as e:
            status = self.disk_full(e)
        if self.world.leader:
            self.world.go_on(False)  # the other processes, waiting for the next update, end with the leader
        return status

    def disk_full(self, e: "ckpt.DiskFull") -> str:
        """The run stops where it is; its newest checkpoint (written before the disk filled) resumes it."""
        self.ctx.emit(P.Error(message=str(e), code="disk_full"))
        return "disk_full"

    def check_disk(self) -> None:
        """Before the first update: room for a checkpoint and the two adapters, or one sentence."""
        weights = trainable_weights(self.model)
        need = ckpt.checkpoint_bytes(weights, self.optimizer.state) + 2 * ckpt.array_bytes(weights)
        free = ckpt.free_bytes(self.rd.path)
        if free < need:
            raise ckpt.DiskFull(self.rd.path, need, free, "this run (a checkpoint and its adapters)",
                                then="then start it again" if not self.resume else "then resume it again")

    def diverged(self, why: str, first_bad: Optional[int]) -> str:
        """Remove the checkpoints written while the run diverged; say what to change. The loss of update
        ``first_bad`` is computed with the weights after update ``first_bad - 1``: those went wrong."""
        if first_bad is not None:
            ckpt.remove_from(self.rd, first_bad - 1)
        newest = self.rd.newest_checkpoint()
        then = (f"the newest checkpoint, {newest[0].name}, is from before it: resume from it with the changed "
                f"config, or start again" if newest else "start again")
        self.ctx.emit(P.Advice(code="diverged", step=self.pos.update, message=(
            f"Training diverged: {why}. Lower learning_rate (the rate was {float(self.optimizer.learning_rate):.3g} "
            f"when it did) or raise warmup_steps (now {self.cfg['warmup_steps']}); {then}.")))
        return "diverged"

    def _loop(self) -> str:
        # compiled here, after a resume has replaced the optimizer state the closure captures
        self.step = compiled_step(self.model, self.optimizer, self.value_and_grad, self.world)
        cfg, world, leader = self.cfg, self.world, self.world.leader
        window: deque = deque(maxlen=10)
        session_start_elapsed = self.pos.elapsed
        session_updates = 0
        stream = self.micro_batches()
        self.model.train()
        self.ctx.emit(P.State(state="training", detail=f"update {self.pos.update}/{self.total_updates}"))
        # the leader ends the run (commands, judges, the last update); the others train until it says so
        while self.pos.update < self.total_updates or not leader:
            if leader and (why := self.handle_commands()) is not None:
                return why
            if not world.go_on():
                return "stopped"
            tic = time.perf_counter()
            update = self.pos.update + 1
            lr = learning_rate_at(update, cfg, self.total_updates)
            self.optimizer.learning_rate = lr
            grads, loss_sum, ntoks, own_tokens = None, None, None, mx.array(0.0)
            epoch = self.pos.epoch
            # the micro-batches of this update (fewer in the epoch's last)
            while True:
                _, b, idx, last = next(stream)
                share = world.share(idx)
                inputs, targets, mask = make_batch(self.train, share or idx[:1], cfg["max_seq_length"],
                                                   self.pad_multiple)
                if not share:  # a short last micro-batch left this process nothing: a row that carries no loss
                    mask = mx.zeros_like(mask)
                if self.frozen_cache is not None:
                    inputs = self.frozen_cache.state(tuple(share or idx[:1]), inputs)
                if world.shared:
                    own_tokens = own_tokens + mask.sum()
                loss_sum, ntoks, grads = self.step(inputs, targets, mask, loss_sum, ntoks, grads, last)
                self.pos.batch = b + 1
                if last:
                    break
                mx.eval(loss_sum, ntoks, grads)  # keep the graph from growing across micro-batches
            mx.eval(self.model.state, self.optimizer.state, mx.random.state, loss_sum, ntoks, own_tokens)
            total_tokens = max(ntoks.item(), 1.0)
            epoch_done = self.pos.batch >= len(self.batches)
            if epoch_done:
                self.pos.epoch, self.pos.batch = epoch + 1, 0
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
            ranks = self.rank_figures(own_tokens.item(), dt, mem) if world.shared else []
            if not leader:
                self.check_memory(mem)  # its cache; stopping for memory is the leader's call
                continue
            if ranks:  # the memory guard watches the process with the least memory left
                mem = replace(mem, system_available=min(r["system_available"] for r in ranks))
            step = P.Step(
                step=update, total_steps=self.total_updates, epoch=epoch + 1,
                epoch_progress=(self.pos.batch if not epoch_done else len(self.batches)) / len(self.batches),
                loss=loss, learning_rate=lr, tokens=tokens, trained_tokens=self.pos.trained_tokens,
                tokens_per_second=wt / ws, iterations_per_second=len(window) / ws,
                elapsed=self.pos.elapsed, eta=eta, memory=mem, ranks=ranks,
            )
            self.ctx.emit(step)
            row = {"step": update, "epoch": epoch + 1, "loss": loss, "learning_rate": lr, "tokens": tokens,
                   "trained_tokens": self.pos.trained_tokens, "tokens_per_second": step.tokens_per_second,
                   "iterations_per_second": step.iterations_per_second, "elapsed": self.pos.elapsed,
                   "mlx_active": mem.mlx_active, "mlx_peak": mem.mlx_peak, "rss": mem.rss,
                   "system_available": mem.system_available}
            if (why := self.guard.update(update, loss)) is not None:
                self.metrics.append(row)
                raise Diverged(why, self.guard.first_bad)
            stop = None
            if update % cfg["steps_per_eval"] == 0 or update == self.total_updates:
                stop = self.run_eval(epoch + 1, row)
            self.metrics.append(row)
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

    def rank_figures(self, tokens: float, seconds: float, mem: P.Memory) -> list[dict]:
        """Every process's tokens, speed and memory in this update, in rank order (a collective: all call it)."""
        keys = ("mlx_active", "mlx_peak", "rss", "system_available")
        rows = self.world.gather([tokens, seconds] + [getattr(mem, k) for k in keys])
        return [{"rank": r, "tokens": int(row[0]), "tokens_per_second": row[0] / row[1] if row[1] else 0.0,
                 **{k: int(v) for k, v in zip(keys, row[2:])}} for r, row in enumerate(rows)]

    def summary(self, status: str) -> dict:
        p = self.pos
        return {
            "status": status, "run_dir": str(self.rd.path), "model": self.model_name,
            "updates": p.update, "total_updates": self.total_updates, "epochs_completed": p.epoch,
            "trained_tokens": p.trained_tokens, "elapsed": round(p.elapsed, 3),
            "tokens_per_second": (p.trained_tokens / p.elapsed) if p.elapsed else 0.0,
            "final_loss": self.metrics.last_loss(),
            "best_val_loss": None if math.isinf(p.best_val_loss) else p.best_val_loss,
            "best_recall": p.best_recall, "best_by": self.best_by,
            "best_step": p.best_step, "peak_memory": int(mx.get_peak_memory()),
            "adapters": str(self.rd.best), "final": str(self.rd.final),
            "frozen_cache": self.frozen_cache.figures() if self.frozen_cache else None,
        }

    def finish(self, status: str) -> dict:
        try:
            if status in P.Done.FINISHED:
                self.save_adapter(self.rd.final)
                if not is_adapter_folder(self.rd.best):  # no validation kept a best: the last is the best
                    self.pos.best_step = self.pos.update
                    self.save_adapter(self.rd.best)
            if status not in ("diverged", "disk_full") and self.last_saved_update != self.pos.update:
                self.save_checkpoint({"completed": "final", "early_stopped": "final",
                                      "memory_guard": "memory_guard"}.get(status, "stop"))
        except Diverged as e:
            status = self.diverged(str(e), None)
        except ckpt.DiskFull as e:
            status = self.disk_full(e)
        summary = self.summary(status)
        try:
            C.atomic_write_text(self.rd.summary, json.dumps(summary, indent=2))
            self.metrics.write_json()
        except (OSError, ckpt.DiskFull):
            pass  # a full disk: the done event still carries the summary
        return summary


# settings that decide the data order, the position in it or the trained weights' shapes
ORDER_KEYS = ("data", "seed", "max_seq_length", "mask_prompt", "model", "fine_tune_type", "num_layers",
              "lora_parameters")


def resume_differences(saved: dict, now: dict) -> list[str]:
    """Warnings for a resume whose config changes what the checkpoint's position means. Splitting the
    same effective batch differently (half the batch, twice the accumulation: how a resume after an
    out-of-memory death saves memory) trains the same updates, so it is not one."""
    changed = [(k, saved.get(k), now.get(k)) for k in ORDER_KEYS if saved.get(k) != now.get(k)]
    if C.effective_batch_size(saved) != C.effective_batch_size(now):
        changed += [(k, saved.get(k), now.get(k)) for k in ("batch_size", "grad_accumulation_steps")
                    if saved.get(k) != now.get(k)]
    return [f"{k} was {was!r} in this run and is {is_!r} now: the resumed run will not match an uninterrupted one; "
            f"resume with the run's own config.yaml for an exact continuation." for k, was, is_ in changed]


class SharedStart:
    """The leader's side of starting a run shared among processes (``engine.distributed``): the others
    wait for its config, then for everyone's readiness; a run that fails before it begins still gives
    them both answers, so none waits forever."""

    def __init__(self, world: distributed.World):
        self.world, self.sent, self.checked = world, False, False

    def send_config(self, cfg: dict) -> None:
        self.world.send_json(cfg)
        self.sent = True

    def ready(self, run: Run) -> None:
        """After loading (and restoring): everyone starts from the leader's weights, or none starts."""
        self.checked = True
        others = [(r, why) for r, why in self.world.problems() if r]
        if others:
            rank, why = others[0]
            raise InputError(f"Process {rank} of {self.world.size} could not start the run: {why}")
        run.sync_from_leader()

    def abandon(self, why: str) -> None:
        if not self.world.shared:
            return
        if not self.sent:
            self.world.send_json(None)
        elif not self.checked:
            self.world.problems(why or "the leader stopped")
        self.sent = self.checked = True


def follow(ctx: Context, run_dir: str | Path, resume: bool) -> P.Done:
    """A process other than the leader: trains its share of the leader's run and writes nothing; its
    errors go to its stderr and, before the run begins, to the leader."""
    world = distributed.world()
    cfg = world.send_json(None)
    if cfg is None:
        return P.Done(status="failed", summary={"error": "the leading process did not start the run"})
    run = Run(ctx, cfg, RunDir(run_dir), resume, world=world)
    problem = ""
    try:
        run.prepare()
    except (InputError, DataError, C.ConfigError) as e:
        problem = str(e)
    except Exception as e:  # noqa: BLE001 - the leader names it; the traceback goes to this process's stderr
        import traceback

        ctx.emit(P.Error(message=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()))
        problem = f"{type(e).__name__}: {e}"
    if world.problems(problem):
        return P.Done(status="failed", summary={"error": problem or "another process could not start"})
    run.sync_from_leader()
    return P.Done(status=run.loop(), summary={})


def train(ctx: Context, cfg_raw: dict, run_dir: str | Path, resume: bool = False,
          from_checkpoint: Optional[int] = None) -> P.Done:
    """Run (or resume) a training run, writing the run folder. Returns the done event it emitted. In a
    run shared among processes, this is the leader's part; the others ``follow``."""
    world = distributed.world()
    if not world.leader:
        return follow(ctx, run_dir, resume)
    events_file, lock, awake = None, None, None
    start = SharedStart(world)
    try:
        rd = check_run_folder(run_dir, resume)
        if from_checkpoint is not None and not resume:
            raise InputError("from_checkpoint picks the checkpoint a resume starts from; resume the run to use it.")
        if resume:
            newest = rd.newest_checkpoint()
            if not cfg_raw and rd.config.exists():
                cfg_raw = rd.settings()
            elif not cfg_raw and newest is not None and isinstance(newest[1].get("config"), dict):
                cfg_raw = newest[1]["config"]  # config.yaml is gone: the checkpoint keeps the run's config
                ctx.warn(f"{rd.config} is missing; resuming with the config saved in {newest[0].name}.")
            if not cfg_raw and not rd.list_checkpoints():
                raise InputError(f"{rd.path} holds no run to resume; start a new run or pick another folder.")
            if not cfg_raw:
                raise InputError(f"{rd.path} has no config.yaml and its checkpoints keep no config; pass the run's "
                                 f"config to resume it.")
        cfg, notes = C.validate(cfg_raw)
        if resume and rd.config.exists():
            notes += resume_differences(C.validate(rd.settings())[0], cfg)
        lock = RunLock(rd).acquire()  # one run per folder, from here to the end
        if not resume and rd.list_checkpoints():
            raise InputError(f"{rd.path} already holds a run with checkpoints; resume it or choose a new run folder.")
        ckpt.remove_interrupted_writes(rd)
        events_file = open(rd.events, "a", encoding="utf-8")
        ctx.tee(events_file)
        ctx.run_dir = rd.path  # from here the UI may detach and leave the run to this folder
        awake = keep_awake()
        if lowered := yield_cpu():
            ctx.emit(P.Log(message=f"Training yields the CPU to the app and other programs: {', '.join(lowered)}."))
        for note in notes:
            ctx.warn(note, code=getattr(note, "code", "resume_config"))
        C.save_yaml(cfg, rd.config)
        newest = rd.newest_checkpoint()
        if from_checkpoint is not None:
            newest = (rd.checkpoint(from_checkpoint), {})
        run = Run(ctx, cfg, rd, resume)
        if not resume:
            ckpt.Metrics(rd).clear()
        ctx.emit(P.Config(config=cfg, run_dir=str(rd.path),
                          resumed_from=str(newest[0]) if resume and newest else None))
        start.send_config(cfg)
        run.prepare()
        run.check_disk()
        if resume:
            run.restore(from_checkpoint)
        start.ready(run)
        status = run.loop()
        if status == "stop":
            status = "stopped"
        summary = run.finish(status)
        done = P.Done(status=summary["status"], summary=summary)
    except ckpt.DiskFull as e:
        ctx.emit(P.Error(message=str(e), code="disk_full"))
        done = P.Done(status="disk_full", summary={"error": str(e)})
    except (InputError, DataError, C.ConfigError, RunLocked, RunFolderError) as e:
        ctx.emit(P.Error(message=str(e), code="input"))
        done = P.Done(status="failed", summary={"error": str(e)})
    except Exception as e:  # noqa: BLE001 - shown whole, never swallowed
        import traceback

        ctx.emit(P.Error(message=f"Training failed: {type(e).__name__}: {e}", traceback=traceback.format_exc()))
        done = P.Done(status="failed", summary={"error": f"{type(e).__name__}: {e}"})
    start.abandon(done.summary.get("error", ""))
    ctx.emit(done)
    ctx.run_dir = None
    let_sleep(awake)
    if events_file is not None:
        ctx.tee(None)
        events_file.close()
    if lock is not None:
        lock.release()
    return done


@handles(P.Train)
def handle_train(ctx: Context, cmd: P.Train) -> None:
    train(ctx, cmd.config, cmd.run_dir, cmd.resume, cmd.from_checkpoint)
