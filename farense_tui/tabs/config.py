"""The Config tab: every setting of the schema, grouped, validated as you type with the engine's
own messages; the effective batch size; YAML load and save; the recommended config; the
equivalent command line.

The config lives in ``ConfigTab.texts`` (what each field holds); the field widgets are views of it,
mounted lazily after the first frame, so other tabs can read the config at any time."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Select, Static, Switch, TabPane

from farense_core import config as C

from ..runs import new_run_dir
from ..widgets.choice_screen import Choice, ChoiceScreen
from ..widgets.deferred import mount_after_first_frame
from ..session import Session

UNSET = object()  # an empty field: the setting's default
FieldText = Union[str, bool]  # an Input's text, or a Switch's state


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
    return str(value)


def field_text(setting: C.Setting, value: Any) -> FieldText:
    return bool(value) if isinstance(setting.default, bool) else format_value(value)


def parse_value(setting: C.Setting, text: FieldText) -> Any:
    """The value a field stands for; text settings stay text, others are read as YAML."""
    if isinstance(text, bool):
        return text
    text = text.strip()
    if not text:
        return None if setting.default is None else UNSET
    if isinstance(setting.default, str):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # the setting's check names what is wrong with it


def check_setting(setting: C.Setting, text: FieldText) -> Optional[str]:
    """The setting's own message for this text, or None when it is valid."""
    value = parse_value(setting, text)
    if value is UNSET:
        return None
    try:
        C.validate({setting.key: value})
    except C.ConfigError as e:
        return str(e)
    return None


class SettingField(Horizontal):
    """One setting: its name, an editor (a switch for true/false), and its help, which gives way
    to the validation message while the value is wrong."""

    DEFAULT_CSS = """
    SettingField { height: auto; margin-bottom: 1; }
    SettingField .name { width: 24; }
    SettingField Input { width: 28; background: $boost; }
    SettingField Switch { width: 28; height: 1; border: none; padding: 0; }
    SettingField Select { width: 28; }
    SettingField Input:focus, SettingField Switch:focus { background: $primary 40%; }
    SettingField .note { width: 1fr; padding-left: 2; color: $text-muted; }
    SettingField.-invalid .note { color: $error; }
    SettingField.-invalid Input { background: $error 30%; }
    """

    def __init__(self, setting: C.Setting, text: FieldText) -> None:
        super().__init__(id=f"field-{setting.key}")
        self.setting = setting
        self.text = text
        self.message: Optional[str] = None
        self.editor: Optional[Input | Switch | Select] = None
        self.note: Optional[Static] = None

    def compose(self) -> ComposeResult:
        s = self.setting
        yield Label(s.key, classes="name")
        if isinstance(self.text, bool):
            self.editor = Switch(value=self.text, id=f"setting-{s.key}")
        elif self.picked(self.text):
            self.editor = Select([(c, c) for c in s.choices], value=self.text or s.default or Select.NULL,
                                 allow_blank=s.default is None, prompt="not set", id=f"setting-{s.key}",
                                 compact=True)
        else:
            self.editor = Input(value=self.text, placeholder=format_value(s.default) or "not set",
                                id=f"setting-{s.key}", compact=True)
        yield self.editor
        self.note = Static(s.help, classes="note")
        yield self.note

    def on_mount(self) -> None:
        self._draw_message()

    def picked(self, text: FieldText) -> bool:
        """Whether this value is edited with a pick-list (one of a short list of values, or unset)."""
        return bool(self.setting.choices) and isinstance(text, str) and (not text or text in self.setting.choices)

    def set_text(self, text: FieldText) -> None:
        """Change the value (before the field is mounted too: it then starts with it)."""
        self.text = text
        if isinstance(self.editor, Select):
            if self.picked(text) and (text or self.setting.default):
                self.editor.value = text or self.setting.default
            elif self.picked(text):
                self.editor.clear()  # unset (lr_schedule: constant)
            else:  # a value no pick-list holds (an mlx-lm schedule mapping): typed instead
                self.call_later(self._type_instead, text)
        elif self.editor is not None:
            self.editor.value = text

    async def _type_instead(self, text: str) -> None:
        old, self.editor = self.editor, Input(value=text, id=f"setting-{self.setting.key}", compact=True)
        await old.remove()
        await self.mount(self.editor, after=self.query_one(".name"))

    def show_message(self, message: Optional[str]) -> None:
        if message != self.message:
            self.message = message
            self._draw_message()

    def _draw_message(self) -> None:
        if self.note is not None:
            self.set_class(self.message is not None, "-invalid")
            self.note.update(self.message or self.setting.help)


class SettingsList(VerticalScroll):
    """The scrolling list of settings. Its focus restyles itself only, and only where a rule styles it by
    its focus: Textual restyles a widget's descendants too when its focus changes, here some 170 widgets
    (over 100 ms of a busy machine's CPU on every F2 and every key leaving the tab), though no rule styles
    them by this list's focus; and restyling the list itself sets all its rules again, which repaints its
    scrollbar whole (about 1 ms of each F2's frame) though no rule changed."""

    FOCUS_CLASSES = frozenset({"focus", "blur", "focus-within"})

    def watch_has_focus(self, _has_focus: bool) -> None:
        sheet = self.app.stylesheet
        rules = sheet.rules_map
        names = self._selector_names | self.vertical_scrollbar._selector_names  # Textual restyles both
        if any(self.FOCUS_CLASSES & rule.pseudo_classes for name in rules.keys() & names for rule in rules[name]):
            sheet.update_nodes([self], animate=True)


class ConfigTab(TabPane):
    BINDINGS = [
        Binding("ctrl+o", "load", "Load YAML"),
        Binding("ctrl+s", "save", "Save YAML"),
        Binding("ctrl+r", "apply_recommended", "Recommended"),
    ]

    DEFAULT_CSS = """
    ConfigTab #settings { width: 1fr; }
    ConfigTab .group { text-style: bold; color: $accent; margin-bottom: 1; }
    ConfigTab #config-side { width: 40; padding: 0 1; border-left: vkey $panel-lighten-2; }
    ConfigTab #config-side Label { padding: 1 0 0 0; }
    ConfigTab #config-side Horizontal { height: auto; }
    ConfigTab #config-side Button { min-width: 10; margin-right: 1; }
    ConfigTab #config-status.-invalid { color: $error; }
    ConfigTab #config-status { color: $success; }
    ConfigTab #command-preview { color: $text-muted; }
    ConfigTab #config-notes { color: $warning; }
    """

    def __init__(self, session: Session) -> None:
        super().__init__(session.title("config"), id="config")
        self.session = session
        self.texts: dict[str, FieldText] = {s.key: field_text(s, s.default) for s in C.SETTINGS}
        self.fields = {s.key: SettingField(s, self.texts[s.key]) for s in C.SETTINGS}  # mounted lazily
        self._revalidate_pending = False

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield SettingsList(id="settings")
            with Vertical(id="config-side"):
                yield Label("Effective batch size")
                yield Static("", id="effective-batch")
                yield Label("Validation")
                yield Static("", id="config-status")
                yield Label("YAML file (ctrl+o load, ctrl+s save)")
                yield Input(value=str(self.session.config_path or "config.yaml"), id="config-path")
                with Horizontal():
                    yield Button("Load", id="load")
                    yield Button("Save", id="save")
                    yield Button("Recommended", id="recommended")
                yield Label("Equivalent command line")
                yield Static("", id="command-preview")
                yield Static("", id="config-notes")

    def _settings(self) -> list:
        widgets = []
        for group in C.GROUPS:
            widgets.append(Label(group.capitalize() if group != "lora" else "LoRA", classes="group"))
            widgets += [self.fields[s.key] for s in C.SETTINGS if s.group == group]
        return widgets

    def on_mount(self) -> None:
        # the fields (most of the app's widgets) mount after the first frame; until then they
        # keep what set_values gives them
        mount_after_first_frame(self.query_one("#settings", SettingsList), self._settings())
        path = self.session.config_path
        if path:
            self.load(path)
        else:
            self.revalidate()
            self.mark_saved()

    # -- unsaved changes

    def _meaning(self) -> dict:
        """What the fields say: the resolved config, or (while invalid) their texts."""
        cfg, _ = self._validate()
        return cfg if cfg is not None else {"texts": dict(self.texts)}

    def mark_saved(self) -> None:
        """What the fields hold now is what a file holds (just loaded or saved)."""
        self.saved = self._meaning()

    @property
    def dirty(self) -> bool:
        """Settings changed since the last load or save (an empty field and its default are the same)."""
        return self._meaning() != getattr(self, "saved", None) if hasattr(self, "saved") else False

    @property
    def fields_mounted(self) -> bool:
        return all(field.is_mounted for field in self.fields.values())

    # -- the config

    def raw(self) -> dict:
        """The fields as a raw config (empty fields left out: their defaults apply)."""
        return {s.key: v for s in C.SETTINGS if (v := parse_value(s, self.texts[s.key])) is not UNSET}

    def _validate(self) -> tuple[Optional[dict], Optional[C.ConfigError]]:
        try:
            cfg, _ = C.validate(self.raw())
        except C.ConfigError as e:
            return None, e
        return cfg, None

    def resolved(self) -> tuple[Optional[dict], Optional[str]]:
        """(config, None) when valid, else (None, the one-sentence reason)."""
        cfg, error = self._validate()
        return cfg, None if error is None else str(error)

    # -- validating as you type

    @on(Input.Changed, "SettingField Input")
    @on(Switch.Changed, "SettingField Switch")
    @on(Select.Changed, "SettingField Select")
    def _field_changed(self, event: Input.Changed | Switch.Changed | Select.Changed) -> None:
        key = event.control.id.removeprefix("setting-")
        value = "" if isinstance(event.control, Select) and event.control.is_blank() else event.value
        if self.texts.get(key) == value:
            return
        self.texts[key] = value
        # a burst of changes (typing fast, loading a file) is checked once, after it
        if not self._revalidate_pending:
            self._revalidate_pending = True
            self.call_after_refresh(self.revalidate)

    @on(Input.Changed, "#config-path")
    def _path_changed(self) -> None:
        self._show_command()

    def revalidate(self) -> None:
        self._revalidate_pending = False
        messages = {s.key: check_setting(s, self.texts[s.key]) for s in C.SETTINGS}
        _, error = self._validate()
        status = self.query_one("#config-status", Static)
        status.update("The config is valid." if error is None else str(error))
        status.set_class(error is not None, "-invalid")
        # a message about settings together (epochs and iters, a missing model) shows by the field too
        key = error.key.split(".", 1)[0] if error is not None else ""
        if messages.get(key, "") is None:
            messages[key] = str(error)
        for key, message in messages.items():
            self.fields[key].show_message(message)
        self._show_effective_batch(messages)
        self._show_command()

    def _show_effective_batch(self, messages: dict) -> None:
        keys = ("batch_size", "grad_accumulation_steps")
        effective = self.query_one("#effective-batch", Static)
        if any(messages[k] for k in keys):
            effective.update("-")
            return
        cfg, _ = C.validate({k: v for k, v in self.raw().items() if k in keys})
        effective.update(f"{cfg['batch_size']} × {cfg['grad_accumulation_steps']} = "
                         f"{C.effective_batch_size(cfg)} samples per update")

    def _show_command(self) -> None:
        path = self.query_one("#config-path", Input).value.strip() or "config.yaml"
        run_dir = new_run_dir(self.session.checkpoints_dir, self.session.clock())
        self.query_one("#command-preview", Static).update(
            f"Save the config, then run:\n{C.command_line(path, str(run_dir))}"
        )

    # -- changing the config

    def set_values(self, values: dict, *, replace: bool) -> list[str]:
        """Put values in the fields (every field when replace); return notes on keys left out."""
        for setting in C.SETTINGS:
            if setting.key in values or replace:
                text = field_text(setting, values.get(setting.key, setting.default))
                self.texts[setting.key] = text
                self.fields[setting.key].set_text(text)
        self.revalidate()
        return [f"{key} is not a setting of this app; it was left out." for key in values if key not in self.texts]

    def _show_notes(self, notes: list[str]) -> None:
        self.query_one("#config-notes", Static).update("\n".join(notes))

    def load(self, path: str | Path) -> bool:
        try:
            raw = C.load_yaml(path)
            cfg, notes = C.validate(raw)
        except C.ConfigError as e:
            self.app.notify(str(e), title="Config not loaded", severity="error")
            status = self.query_one("#config-status", Static)
            status.update(str(e))
            status.set_class(True, "-invalid")
            return False
        # keep what the file says (not the defaults validate fills in), so epochs/iters stay as written
        self.set_values({k: v for k, v in cfg.items() if k in raw or k == "epochs"}, replace=True)
        self.mark_saved()
        self._show_notes(notes)
        self.app.notify(f"Loaded {path}.", title="Config")
        return True

    def save(self, path: str | Path, *, confirmed: bool = False, then: Optional[Callable[[], None]] = None) -> bool:
        """Write the settings into ``path`` (an existing file keeps its comments and other keys).
        Overwriting a file asks first, naming the values that change; ``then`` runs once saved."""
        cfg, error = self.resolved()
        if cfg is None:
            self.app.notify(f"The config is not valid, so it was not saved: {error}",
                            title="Config not saved", severity="error")
            return False
        path = Path(path)
        if path.is_file() and not confirmed:
            try:
                before, _ = C.validate(C.load_yaml(path))
                changed = C.changes(before, cfg)
            except C.ConfigError:
                changed = ["its contents are replaced (it is not a valid config now)"]
            if not changed:
                self.mark_saved()
                self.app.notify(f"{path} already holds these settings.", title="Config")
                if then is not None:
                    then()
                return True
            shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            self.app.push_screen(
                ChoiceScreen(f"Overwrite {path}?", f"{len(changed)} setting{'s' * (len(changed) != 1)} change: "
                                                   f"{shown}. Its comments and other keys are kept.",
                             [Choice("o", "Overwrite", "overwrite", "error")]),
                lambda answer: answer == "overwrite" and self.save(path, confirmed=True, then=then))
            return False
        try:
            C.write_config_file(cfg, path)
        except OSError as e:
            self.app.notify(f"{path} cannot be written ({e.strerror}).", title="Config not saved",
                            severity="error")
            return False
        self.mark_saved()
        self.app.notify(f"Saved {path}.", title="Config")
        if then is not None:
            then()
        return True

    def apply_recommended(self) -> bool:
        recommended = self.session.find_recommended()
        if not recommended:
            self.app.notify(f"There is no recommended config yet; run preflight first "
                            f"({self.session.tab_keys.get('preflight', 'Preflight')}, then r).",
                            title="Config", severity="warning")
            return False
        before = self.resolved()[0]
        notes = self.set_values(recommended, replace=False)
        self._show_notes(notes)
        after = self.resolved()[0]
        changed = C.changes(before, after) if before is not None and after is not None else []
        source = ("" if self.session.recommended else
                  f" (from {self.session.checkpoints_dir / C.RECOMMENDED_FILE}, written by an earlier preflight)")
        what = (f"{len(changed)} setting{'s' * (len(changed) != 1)} changed: {'; '.join(changed)}" if changed
                else "the settings already matched it")
        self.app.notify(f"Applied the recommended config{source}: {what}.", title="Config")
        return True

    # -- actions and buttons

    def path(self) -> str:
        """The YAML file named in the tab."""
        return self.query_one("#config-path", Input).value.strip() or "config.yaml"

    def action_load(self) -> None:
        self.load(self.path())

    def action_save(self) -> None:
        self.save(self.path())

    def action_apply_recommended(self) -> None:
        self.apply_recommended()

    @on(Button.Pressed, "#load")
    def _load_pressed(self) -> None:
        self.action_load()

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#recommended")
    def _recommended_pressed(self) -> None:
        self.action_apply_recommended()
