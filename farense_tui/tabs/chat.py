"""The Chat tab: pick a model and an adapter (the latest run's best by default), type, and the reply
streams in token by token; sampler settings; stop a reply; compare the base model and base +
adapter on the same prompt, side by side; ask the loaded model the training questions and see
every wrong answer (ctrl+g)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, Select, Static, TabPane

from farense_core import protocol as P
from farense_core import sampling
from farense_core.rundir import RunDir

from ..messages import EngineEvent, EngineExited, ReplyProgress
from ..runs import format_loss, list_runs, served_url
from ..widgets.chat_log import ChatLog
from ..widgets.eval_report import EvalReportScreen
from ..session import Session

NO_ADAPTER = "none"

@dataclass
class PendingReply:
    title: str
    then: Optional[tuple[Optional[str], P.Chat]] = None  # compare: (adapter, chat) to send next


class ChatTab(TabPane):
    FOCUS_FIRST = "#prompt"  # F5 lands in the message box, ready to type
    BINDINGS = [
        Binding("ctrl+l", "load", "Load model"),
        Binding("escape", "stop_reply", "Stop reply"),
        Binding("ctrl+t", "toggle_compare", "Compare"),
        Binding("ctrl+g", "evaluate", "What it knows", show=False),  # its button says so
        Binding("ctrl+n", "new_conversation", "New chat", show=False),  # its button says so
    ]

    DEFAULT_CSS = """
    ChatTab #chat-top { height: auto; }
    ChatTab #chat-top Vertical { height: auto; }
    ChatTab #model-box { width: 1fr; }
    ChatTab #adapter-box { width: 1fr; padding-left: 1; }
    ChatTab #chat-top Button { margin: 1 0 0 1; }
    ChatTab #chat-status { height: auto; padding: 0 1; color: $text-muted; }
    ChatTab #chat-status.-error { color: $error; }
    ChatTab #chat-endpoint { height: auto; padding: 0 1; color: $success; }
    ChatTab #sampler { width: 32; padding-left: 1; }
    ChatTab #sampler-grid { grid-size: 2; grid-columns: 19 1fr; grid-rows: 1; grid-gutter: 1 0; height: auto; }
    ChatTab #sampler-grid Input { background: $boost; }
    ChatTab #sampler-grid Input:focus { background: $primary 40%; }
    ChatTab #sampler Checkbox, ChatTab #sampler Button { width: 100%; margin-top: 1; }
    ChatTab #prompt { margin-top: 0; }
    ChatTab.-replying #prompt { border: tall $warning; }
    ChatTab .caption { text-style: bold; color: $accent; }
    """

    def __init__(self, session: Session) -> None:
        super().__init__(session.title("chat"), id="chat")
        self.session = session
        self.loaded: Optional[tuple[str, Optional[str]]] = None  # what the engine was asked to load
        self.load_confirmed = False  # the engine answered the last load with chat_loaded
        self.pending: dict[str, PendingReply] = {}
        self.current: Optional[str] = None  # the reply being generated
        self.evaluating = False  # an evaluation is running on the chat engine
        self._count = 0
        self.adapter_picked = False  # the user chose an adapter (or none): keep it over visits

    def compose(self) -> ComposeResult:
        with Horizontal(id="chat-top"):
            with Vertical(id="model-box"):
                yield Label("Model")
                yield Input(placeholder="model folder or Hugging Face id (the Config tab's by default)",
                            id="chat-model")
            with Vertical(id="adapter-box"):
                yield Label("Adapter")
                yield Select([("none: the base model", NO_ADAPTER)], value=NO_ADAPTER, allow_blank=False,
                             id="chat-adapter")
            yield Button("Load (ctrl+l)", id="chat-load")
        yield Input(placeholder="System prompt (optional), sent with every reply: e.g. Responde em português.",
                    id="chat-system", compact=True)
        yield Static("", id="chat-endpoint")
        with Horizontal():
            with Vertical():
                yield Static("Type a question and press enter; the model loads as the tab opens.",
                             id="chat-status")
                yield ChatLog(id="chat-log")
                yield Input(placeholder="Ask about SC Farense… (enter sends, escape stops the reply)", id="prompt")
            with Vertical(id="sampler"):
                yield Label("Sampler", classes="caption")
                with Grid(id="sampler-grid"):
                    for f in sampling.FIELDS:
                        yield Label(f.label)
                        yield Input(str(f.default), id=f"sampler-{f.name}", compact=True, tooltip=f.help)
                yield Checkbox("Compare (ctrl+t)", id="compare", tooltip="The base model and base + adapter, side by side")
                yield Button("New conversation (ctrl+n)", id="new-chat")
                yield Button("What it knows (ctrl+g)", id="evaluate",
                             tooltip="Ask the loaded model the training questions and list the wrong answers")

    def on_mount(self) -> None:
        self.refresh_choices()

    @property
    def log_widget(self) -> ChatLog:
        return self.query_one(ChatLog)

    # -- model and adapter

    def refresh_choices(self) -> None:
        """Adapters of the runs found (the newest first, chosen by default); the Config tab's model."""
        model = self.query_one("#chat-model", Input)
        if not model.value.strip():
            model.value = str(self.session.settings().get("model") or "")
        select = self.query_one("#chat-adapter", Select)
        options = [("none: the base model", NO_ADAPTER)]
        for run in list_runs(self.session.checkpoints_dir):
            if run.adapter is not None:
                score = (f"recall {run.best_recall:.0%}" if run.best_recall is not None
                         else f"best val {format_loss(run.best_val_loss)}")
                options.append((f"{run.name} ({score})", str(run.adapter)))
        previous = select.value
        values = [v for _, v in options]
        keep = previous in values and (self.adapter_picked or previous != NO_ADAPTER)
        with self.prevent(Select.Changed):  # not the user's choice
            select.set_options(options)
            select.value = previous if keep else values[min(1, len(values) - 1)]  # else the newest run's
        self.show_endpoint()

    @on(Select.Changed, "#chat-adapter")
    def _adapter_changed(self) -> None:
        self.adapter_picked = True
        self.show_endpoint()

    def show_endpoint(self) -> None:
        """Where `farense-tui serve` serves the chosen adapter's run, if it does now."""
        _, adapter = self._choice()
        run = RunDir.of_adapter(adapter) if adapter else None
        url = served_url(run.path) if run else None
        line = self.query_one("#chat-endpoint", Static)
        line.update(f"OpenAI-compatible endpoint for this adapter: {url} (farense-tui serve)" if url else "")
        line.display = url is not None

    def _choice(self) -> tuple[str, Optional[str]]:
        model = self.query_one("#chat-model", Input).value.strip()
        adapter = self.query_one("#chat-adapter", Select).value
        return model, None if adapter in (NO_ADAPTER, Select.BLANK) else str(adapter)

    def _ensure_loaded(self) -> bool:
        """Start the chat engine and ask it to load the chosen model and adapter, if not done yet."""
        model, adapter = self._choice()
        if not model:
            self.status("Name a model first (a folder or a Hugging Face id).", error=True)
            return False
        link = self.session.links["chat"]
        if not link.running:
            try:
                link.start()
            except OSError as e:
                self.status(f"The engine could not be started ({e.strerror or e}).", error=True)
                return False
            self.loaded = None
        if self.loaded != (model, adapter):
            if self.loaded and self.loaded[0] == model:
                link.send(P.ChatAdapter(adapter=adapter))
            else:
                link.send(P.ChatLoad(model=model, adapter=adapter))
            self.loaded, self.load_confirmed = (model, adapter), False
            self.status(f"Loading {model}" + (f" with {adapter}" if adapter else "") + "…")
        return True

    def action_load(self) -> None:
        self._ensure_loaded()

    def preload(self) -> None:
        """Load the chosen model in the background as the tab opens, so the first reply starts at once
        (a later choice is sent after it; the engine runs commands in turn)."""
        if self.loaded is None and self.query_one("#chat-model", Input).value.strip():
            self._ensure_loaded()

    @on(Button.Pressed, "#chat-load")
    def _load_pressed(self) -> None:
        self.action_load()

    # -- sending

    def sampler(self) -> dict:
        """The sampler fields' values, checked as the engine checks them (``SamplerError``), and the
        system prompt."""
        values = {f.name: sampling.check(f.name, self.query_one(f"#sampler-{f.name}", Input).value.strip())
                  for f in sampling.FIELDS}
        return {**values, "system": self.query_one("#chat-system", Input).value.strip() or None}

    def _next_id(self, suffix: str = "") -> str:
        self._count += 1
        return f"reply-{self._count}{suffix}"

    @on(Input.Submitted, "#prompt")
    def _prompt_submitted(self, event: Input.Submitted) -> None:
        self.send_prompt(event.value)

    def send_prompt(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if self.current is not None:
            self.app.notify("A reply is being written; press escape to stop it first.", severity="warning")
            return
        if self.evaluating:
            self.app.notify("The model is answering the evaluation's questions; press escape to stop it first.",
                            severity="warning")
            return
        try:
            sampler = self.sampler()
        except sampling.SamplerError as e:
            self.status(str(e), error=True)
            return
        compare = self.query_one("#compare", Checkbox).value
        model, adapter = self._choice()
        if compare and adapter is None:
            self.status("Pick an adapter to compare with the base model.", error=True)
            return
        if not self._ensure_loaded():
            return
        link = self.session.links["chat"]
        self.query_one("#prompt", Input).value = ""
        self.log_widget.add_user(text)
        if compare:
            base_id, tuned_id = self._next_id("-base"), self._next_id("-adapter")
            self.log_widget.expect_compare([(base_id, "base"), (tuned_id, "base + adapter")])
            sampler["seed"] = sampling.comparison_seed()  # both sides sample alike
            tuned = P.Chat(id=tuned_id, message=text, keep_history=False, **sampler)
            self.pending[base_id] = PendingReply("base", then=(adapter, tuned))
            self.pending[tuned_id] = PendingReply("base + adapter")
            link.send(P.ChatAdapter(adapter=None))
            self.loaded = (model, None)
            self._send_chat(P.Chat(id=base_id, message=text, keep_history=False, **sampler))
        else:
            reply_id = self._next_id()
            self.pending[reply_id] = PendingReply("assistant" if adapter is None else "base + adapter")
            self._send_chat(P.Chat(id=reply_id, message=text, **sampler))

    def _send_chat(self, chat: P.Chat) -> None:
        self.current = chat.id
        self.add_class("-replying")
        if not self.session.links["chat"].send(chat):
            self._fail_pending("The chat engine is not running; press ctrl+l to load the model again.")

    def action_stop_reply(self) -> None:
        if self.evaluating:
            self.session.links["chat"].send(P.Cancel())
            self.status("Stopping the evaluation…")
            return
        if self.current is None:
            return
        pending = self.pending.get(self.current)
        if pending is not None and pending.then is not None:
            # a stopped comparison does not go on to the adapter's answer
            self._fail_pending_reply(pending.then[1].id, "stopped before it started")
            pending.then = None
        self.session.links["chat"].send(P.Cancel(id=self.current))
        self.status("Stopping the reply…")

    def action_evaluate(self) -> None:
        """Ask the loaded model (and adapter) the training questions greedily and list what it got wrong."""
        if self.current is not None or self.evaluating:
            self.app.notify("The model is busy; wait for it or press escape first.", severity="warning")
            return
        if not self._ensure_loaded():
            return
        data = str(self.session.settings().get("data") or "data")
        command = P.Evaluate(probe="recall", data=data, base=False)
        if not self.session.links["chat"].send(command):
            self.status("The chat engine is not running; press ctrl+l to load the model again.", error=True)
            return
        self.evaluating = True
        self.status(f"Asking {command.n} training questions from {data}/train.jsonl, greedily…")

    def action_toggle_compare(self) -> None:
        box = self.query_one("#compare", Checkbox)
        box.value = not box.value

    def action_new_conversation(self) -> None:
        if self.current is not None:
            self.action_stop_reply()
        self.pending.clear()  # what still arrives of a stopped reply is dropped
        self.log_widget.clear_log()
        self.session.links["chat"].send(P.ChatReset())
        self.status("New conversation.")

    @on(Button.Pressed, "#new-chat")
    def _new_pressed(self) -> None:
        self.action_new_conversation()

    @on(Button.Pressed, "#evaluate")
    def _evaluate_pressed(self) -> None:
        self.action_evaluate()

    # -- engine events

    def status(self, text: str, error: bool = False) -> None:
        widget = self.query_one("#chat-status", Static)
        widget.update(text)
        widget.set_class(error, "-error")

    def on_reply_progress(self, message: ReplyProgress) -> None:
        pending = self.pending.get(message.reply_id)
        if pending is not None:
            self.log_widget.update_reply(message.reply_id, message.text, pending.title)

    def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        if isinstance(event, P.ChatLoaded):
            what = event.model + (f" + {event.adapter}" if event.adapter else " (no adapter)")
            self.load_confirmed = True
            self.status(f"Loaded {what} in {event.seconds:.1f} s.")
        elif isinstance(event, P.ReplyDone):
            self._reply_done(event)
        elif isinstance(event, P.EvaluateProgress):
            self.status(f"Evaluating: {event.done} of {event.total} questions answered ({event.probe}).")
        elif isinstance(event, P.EvaluateDone):
            self.evaluating = False
            self._evaluation_done(event)
        elif isinstance(event, P.Error):
            if not self.load_confirmed:
                self.loaded = None  # the load failed or is not supported: ask again next time
            self.evaluating = False
            self.status(event.message, error=True)
            self._fail_pending(event.message)
        elif isinstance(event, P.Finished) and event.command == "evaluate" and event.status == "cancelled":
            self.evaluating = False
            self.status("Evaluation stopped.")
        elif isinstance(event, P.Warning):
            self.app.notify(event.message, title="Chat", severity="warning")

    def _evaluation_done(self, event: P.EvaluateDone) -> None:
        probe = event.report["probes"][0]
        result = next(iter(probe["systems"].values()))
        self.status(f"The model answered {result['all']['facts']:.0%} of {probe['n']} training questions with "
                    f"every fact right ({len(result['wrong'])} wrong).")
        self.app.push_screen(EvalReportScreen(event.report, event.path))

    def _reply_done(self, event: P.ReplyDone) -> None:
        pending = self.pending.pop(event.id, None)
        if self.current == event.id:
            self.current = None
        stats = (f"{event.generation_tokens} tokens · {event.generation_tps:.1f} tok/s · "
                 f"first token {event.time_to_first_token:.2f} s · {event.finish_reason}")
        if pending is None:  # a reply of a conversation cleared meanwhile
            self.remove_class("-replying")
            return
        self.log_widget.finish_reply(event.id, event.text, stats, title=pending.title,
                                     failed=event.finish_reason == "cancelled")
        if pending.then is not None:
            adapter, chat = pending.then
            self.session.links["chat"].send(P.ChatAdapter(adapter=adapter))
            self.loaded = (self.loaded[0], adapter) if self.loaded else None
            self._send_chat(chat)
            return
        self.remove_class("-replying")
        self.status(f"Reply done: {stats}.")

    def _fail_pending_reply(self, reply_id: str, reason: str) -> None:
        pending = self.pending.pop(reply_id, None)
        self.log_widget.finish_reply(reply_id, f"(no reply: {reason})", "failed",
                                     title=pending.title if pending else "assistant", failed=True)

    def _fail_pending(self, reason: str) -> None:
        """The engine cannot answer (an error or it exited): end every reply in flight."""
        for reply_id in list(self.pending):
            self._fail_pending_reply(reply_id, reason)
        self.current = None
        self.remove_class("-replying")

    def on_engine_exited(self, message: EngineExited) -> None:
        self.loaded = None
        self.evaluating = False
        if message.crashed:
            self.status(message.report, error=True)
            self._fail_pending("the chat engine exited")
