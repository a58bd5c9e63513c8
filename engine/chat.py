"""The chat session: a model and optional adapter, a conversation, streamed replies.

``ChatSession`` is a plain class (usable from a script or a test without the protocol);
the handlers at the bottom wire it to the engine's commands and events.

Generation is mlx-lm's own ``stream_generate`` with its sampler and logits processors,
so a reply costs what ``mlx_lm.generate`` costs; we only add a cancel check and a
callback between tokens.

Adapters switch without reloading the base: the LoRA wrappers mlx-lm puts around the
base's layers keep the original layer objects, so unwrapping them gives the base back
exactly, and applying the next adapter runs the same code as ``mlx_lm.load(...,
adapter_path=...)``. A fresh load and a switch therefore give identical logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
from mlx.utils import tree_unflatten

from farense_core import protocol as P
from farense_core.models import ModelNotFoundError, locate_model
from farense_core.rundir import AdapterSettingsError, RunDir, is_adapter_folder, read_adapter_settings
from farense_core.sampling import DEFAULTS as SAMPLER_DEFAULTS
from farense_core.sampling import SamplerError, check_all

from .model import quantization_of, set_base_dtype
from .server import Context, handles


class ChatError(Exception):
    """A problem the user can fix; the message is one sentence saying what to do."""


# ----------------------------------------------------------------- settings


@dataclass
class ReplySettings:
    """How one reply is sampled: ``farense_core.sampling``'s settings (defaults, checks and why), a
    seed, a system message and whether the exchange joins the history."""

    temperature: float = SAMPLER_DEFAULTS["temperature"]
    top_p: float = SAMPLER_DEFAULTS["top_p"]
    min_p: float = SAMPLER_DEFAULTS["min_p"]
    repetition_penalty: float = SAMPLER_DEFAULTS["repetition_penalty"]
    repetition_context_size: int = SAMPLER_DEFAULTS["repetition_context_size"]
    max_tokens: int = SAMPLER_DEFAULTS["max_tokens"]
    seed: Optional[int] = None
    system: Optional[str] = None  # a system message for this reply (not kept in the history)
    keep_history: bool = True  # False: answer this message alone and do not record it

    def check(self) -> None:
        try:
            check_all({name: getattr(self, name) for name in SAMPLER_DEFAULTS})
        except SamplerError as e:
            raise ChatError(str(e)) from None


@dataclass
class Reply:
    """One finished reply and its statistics (the fields of ``reply_done`` less the id)."""

    text: str
    finish_reason: str  # stop, length, cancelled
    prompt_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    time_to_first_token: float = 0.0  # seconds from the call to the first generated token
    peak_memory: int = 0  # bytes, MLX's peak during this reply
    cached_tokens: int = 0  # leading prompt tokens taken from the last reply's KV cache


# ---------------------------------------------------------------- locating


def _locate(name: Optional[str]) -> str:
    """The model folder (or Hugging Face id) for ``name``, checked; a missing one is a ``ChatError``."""
    try:
        return locate_model(name)
    except ModelNotFoundError as e:
        raise ChatError(str(e)) from None


def adapter_folder(path: str) -> Path:
    """The folder holding ``adapters.safetensors`` and ``adapter_config.json``: ``path`` itself,
    or for a run folder its best adapter (``adapters/``), else its final one (``final/``)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ChatError(f"The adapter folder {path} does not exist; give a run folder or an "
                        "adapter folder with adapters.safetensors and adapter_config.json.")
    found = root if is_adapter_folder(root) else RunDir(root).adapter()
    if found is not None:
        return found.resolve()
    raise ChatError(f"No adapter found in {path} (looked for adapters.safetensors and "
                    "adapter_config.json there, in its adapters/ and final/ folders and its checkpoints); "
                    "train a run first or point at its adapter folder.")


def _fine_tune_type(folder: Path) -> str:
    try:
        return read_adapter_settings(folder).get("fine_tune_type", "lora")
    except AdapterSettingsError as e:
        raise ChatError(str(e)) from None


def _unwrap_adapter_layers(model) -> None:
    """Put back the base layers the LoRA/DoRA wrappers hold. (mlx-lm's ``remove_lora_layers``
    only knows ``LoRALinear``; adapters may also wrap embeddings, switch layers, or be DoRA.)"""
    from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
    from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

    wrapped = []
    for name, module in model.named_modules():
        if isinstance(module, (LoRALinear, DoRALinear, LoRASwitchLinear)):
            wrapped.append((name, module.linear))
        elif isinstance(module, (LoRAEmbedding, DoRAEmbedding)):
            wrapped.append((name, module.embedding))
    if wrapped:
        model.update_modules(tree_unflatten(wrapped))


# ------------------------------------------------------------------ session


def prepare_base(model, choice: str, full: bool = False) -> str:
    """Apply ``base_dtype`` to a loaded model as training does (``full``: for a full fine-tune's
    weights, which load only into a float copy), keeping a quantized base as it is when a float32
    copy would take more than half the memory available now."""
    import psutil
    from mlx.utils import tree_flatten

    quant = quantization_of(model)
    if full and choice == "keep":
        choice = "auto"
    fits = True
    if quant:
        stored = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
        fits = stored * 32 / quant["bits"] <= psutil.virtual_memory().available / 2
    return set_base_dtype(model, choice, full, fits)


class ChatSession:
    """A loaded model (+ adapter), its tokenizer and the conversation so far.

    >>> session = ChatSession.load("path/to/model", adapter="runs/farense")
    >>> reply = session.reply("Quando foi fundado o Farense?", ReplySettings(), on_token=print)
    >>> session.set_adapter(None)   # the bare base, without reloading it
    """

    def __init__(self, model, tokenizer, model_path: str, base_dtype: str = "keep"):
        self.model = model
        self.tokenizer = tokenizer
        self.model_path = model_path
        self.base_dtype_choice = base_dtype
        self.base_dtype = prepare_base(model, base_dtype)
        self.adapter: Optional[str] = None  # the adapter folder in use
        self._adapter_type = ""
        self.history: list[dict] = []
        # the KV cache of the last reply and the tokens it holds: the next prompt usually starts with
        # them (the conversation so far), so only its new part is processed
        self._cache = None
        self._cached: list[int] = []

    @classmethod
    def load(cls, model: Optional[str] = None, adapter: Optional[str] = None,
             base_dtype: str = "auto") -> "ChatSession":
        """``base_dtype`` as in training: ``auto`` computes a quantized base in float32 on a CPU backend
        (where 4-bit and half-precision matmuls get no BLAS help) when that fits in memory."""
        import mlx_lm

        path = _locate(model)
        try:
            loaded, tokenizer = mlx_lm.load(path)
        except Exception as e:  # noqa: BLE001 - a failed load becomes one sentence
            raise ChatError(f"The model {path} could not be loaded ({_first_line(e)}); check that "
                            "it is an MLX model folder or a reachable Hugging Face model id.") from e
        session = cls(loaded, tokenizer, path, base_dtype)
        session.set_adapter(adapter)
        return session

    # -- adapters
    def set_adapter(self, adapter: Optional[str]) -> None:
        """Use ``adapter`` (a folder, or a run folder) or, with None, the bare base."""
        from mlx_lm.tuner.utils import load_adapters

        folder = adapter_folder(adapter) if adapter else None
        kind = _fine_tune_type(folder) if folder else ""
        self._cache, self._cached = None, []  # other weights: the cached keys and values are stale
        if "full" in (kind, self._adapter_type):
            # a full fine-tune replaced the base weights themselves: only a reload undoes it
            import mlx_lm

            self.model, self.tokenizer = mlx_lm.load(self.model_path)
            self.base_dtype = prepare_base(self.model, self.base_dtype_choice, full=kind == "full")
        else:
            _unwrap_adapter_layers(self.model)
        self.adapter, self._adapter_type = None, ""
        if folder is not None:
            try:
                load_adapters(self.model, str(folder))
            except ValueError as e:
                _unwrap_adapter_layers(self.model)  # back to the clean base
                raise ChatError(f"The adapter in {folder} does not fit the model {self.model_path} "
                                f"({_first_line(e)}); use an adapter trained on this base model.") from None
            self.adapter, self._adapter_type = str(folder), kind
        self.model.eval()  # no dropout in fresh LoRA layers
        mx.eval(self.model.parameters())  # load now, not inside the first reply

    # -- conversation
    def reset(self) -> None:
        self.history.clear()

    def _reusable_cache(self, prompt: list[int]) -> tuple[list, int]:
        """The KV cache to continue from and how many leading prompt tokens it already holds."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        shared = 0
        for a, b in zip(self._cached, prompt):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(prompt) - 1)  # at least one token must go through the model
        if self._cache is not None and shared > 0:
            extra = len(self._cached) - shared
            if extra == 0 or (can_trim_prompt_cache(self._cache) and trim_prompt_cache(self._cache, extra) == extra):
                return self._cache, shared
        return make_prompt_cache(self.model), 0

    def messages_for(self, message: str, settings: ReplySettings) -> list[dict]:
        messages = [{"role": "system", "content": settings.system}] if settings.system else []
        if settings.keep_history:
            messages += self.history
        return messages + [{"role": "user", "content": message}]

    def encode(self, messages: list[dict]) -> list[int]:
        """Prompt tokens, exactly as ``mlx_lm.generate`` builds them: the chat template as text,
        then encoded without adding special tokens again."""
        tok = self.tokenizer
        if tok.has_chat_template:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tok.encode(text, add_special_tokens=False)
        # a base model without a template: a plain transcript it can continue
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
        return tok.encode(text)

    def reply(self, message: str, settings: Optional[ReplySettings] = None,
              on_token: Optional[Callable[[str], None]] = None,
              should_cancel: Optional[Callable[[], bool]] = None) -> Reply:
        """Answer ``message``; ``on_token(text)`` gets each piece as it is generated,
        ``should_cancel()`` is asked after each token and stops the reply when true. The exchange
        joins the history (a cancelled reply with the part the user saw) unless ``keep_history``
        is off."""
        from mlx_lm.generate import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        settings = settings or ReplySettings()
        settings.check()
        start = time.perf_counter()
        prompt = self.encode(self.messages_for(message, settings))
        if settings.seed is not None:
            mx.random.seed(settings.seed)
        sampler = make_sampler(settings.temperature, settings.top_p, settings.min_p)
        processors = make_logits_processors(
            repetition_penalty=None if settings.repetition_penalty == 1 else settings.repetition_penalty,
            repetition_context_size=settings.repetition_context_size,
        )
        mx.reset_peak_memory()
        pieces: list[str] = []
        first_token_at = None
        last = None
        finish = "length"
        cache, reused = self._reusable_cache(prompt)
        self._cache, self._cached = None, []  # until this reply has ended, the cache is in flux
        generated: list[int] = []
        stream = stream_generate(self.model, self.tokenizer, mx.array(prompt[reused:]),
                                 max_tokens=settings.max_tokens, sampler=sampler, logits_processors=processors,
                                 prompt_cache=cache)
        with contextlib.closing(stream):
            for last in stream:
                generated.append(last.token)
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                if last.text:
                    pieces.append(last.text)
                    if on_token is not None:
                        on_token(last.text)
                if last.finish_reason is not None:
                    finish = last.finish_reason
                    break
                if should_cancel is not None and should_cancel():
                    finish = "cancelled"
                    break
        held = cache[0].offset if cache and hasattr(cache[0], "offset") else 0
        known = prompt + generated
        if 0 < held <= len(known):
            self._cache, self._cached = cache, known[:held]
        text = "".join(pieces)
        if settings.keep_history:
            self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        return Reply(
            text=text, finish_reason=finish, prompt_tokens=len(prompt), cached_tokens=reused,
            prompt_tps=last.prompt_tps if last else 0.0,
            generation_tokens=last.generation_tokens if last else 0,
            generation_tps=last.generation_tps if last else 0.0,
            time_to_first_token=(first_token_at - start) if first_token_at else 0.0,
            peak_memory=int(mx.get_peak_memory()),
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__).rstrip(".:")


# ----------------------------------------------------------------- handlers

_session: Optional[ChatSession] = None


def _require_session() -> ChatSession:
    if _session is None:
        raise ChatError("No model is loaded for chat; send chat_load with a model first.")
    return _session


def _chat_errors(handler):
    """A ``ChatError`` becomes an ``error`` event with its one sentence and no traceback."""

    @functools.wraps(handler)
    def wrapped(ctx: Context, cmd: P.Record) -> None:
        try:
            handler(ctx, cmd)
        except ChatError as e:
            ctx.emit(P.Error(message=str(e), code="chat"))

    return wrapped


@handles(P.ChatLoad)
@_chat_errors
def on_chat_load(ctx: Context, cmd: P.ChatLoad) -> None:
    """Load a model (and adapter); the same model already loaded only switches the adapter.
    Either way the conversation starts afresh."""
    global _session
    ctx.emit(P.State(state="loading", detail=cmd.model or "default"))
    start = time.perf_counter()
    path = _locate(cmd.model)
    if _session is not None and _session.model_path == path:
        _session.set_adapter(cmd.adapter)
        _session.reset()
    else:
        _session = None  # free the old model before the new one loads (16 GB machines)
        gc.collect()
        mx.clear_cache()
        _session = ChatSession.load(path, cmd.adapter)
    ctx.emit(P.ChatLoaded(model=_session.model_path, adapter=_session.adapter,
                          seconds=round(time.perf_counter() - start, 3)))


@handles(P.ChatAdapter)
@_chat_errors
def on_chat_adapter(ctx: Context, cmd: P.ChatAdapter) -> None:
    session = _require_session()
    start = time.perf_counter()
    session.set_adapter(cmd.adapter)
    ctx.emit(P.ChatLoaded(model=session.model_path, adapter=session.adapter,
                          seconds=round(time.perf_counter() - start, 3)))


@handles(P.ChatReset)
@_chat_errors
def on_chat_reset(ctx: Context, cmd: P.ChatReset) -> None:
    _require_session().reset()


@handles(P.Chat)
@_chat_errors
def on_chat(ctx: Context, cmd: P.Chat) -> None:
    """Stream one reply. Between tokens: ``cancel`` (this id or none), ``stop`` or ``shutdown``
    end it at once; any other command waits, in order, until the reply is done."""
    session = _require_session()
    settings = ReplySettings(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(ReplySettings)})
    deferred: list[P.Record] = []
    cancelled = False

    def should_cancel() -> bool:
        nonlocal cancelled
        while (pending := ctx.poll()) is not None:
            if isinstance(pending, P.Cancel):
                cancelled = cancelled or pending.id in ("", cmd.id)  # another id: nothing to stop
            else:
                if isinstance(pending, (P.Stop, P.Shutdown)):
                    cancelled = True
                if not isinstance(pending, P.Stop):
                    deferred.append(pending)  # shutdown still ends the engine afterwards
        return cancelled or ctx.stop_requested.is_set()

    ctx.emit(P.State(state="chatting", detail=cmd.id))
    try:
        reply = session.reply(cmd.message, settings,
                              on_token=lambda text: ctx.emit(P.Token(id=cmd.id, text=text)),
                              should_cancel=should_cancel)
        ctx.emit(P.ReplyDone(id=cmd.id, **dataclasses.asdict(reply)))
        ctx.job_cancelled = reply.finish_reason == "cancelled"
    finally:
        while (pending := ctx.poll()) is not None:
            deferred.append(pending)
        for pending in deferred:
            ctx.commands.put(pending)
