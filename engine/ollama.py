"""An Ollama ``Modelfile`` for an exported GGUF: the model's chat template translated into Ollama's Go
template (and checked against the real template), its default system prompt, the stop tokens and our
sampler defaults.

The translation reads the Hugging Face template by rendering conversations of marked messages and
cutting out each role's text before and after its content. It covers templates of the form
"prefix(role) content suffix(role)" (ChatML as SmolLM2 and Qwen use, Llama 3, Mistral's and most others);
it is verified by rendering three conversations both ways, and any difference refuses the Modelfile
with one sentence rather than writing one that prompts the model differently from its training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from farense_core.sampling import DEFAULTS as SAMPLER

MARK = {"system": "\x02S\x03", "user": "\x02U\x03", "assistant": "\x02A\x03"}


class TemplateError(ValueError):
    """One sentence: why no Modelfile template could be written."""


@dataclass
class Turns:
    """Text around each role's content, the generation prompt, and the template's own system prompt."""

    pre: dict[str, str]
    suf: dict[str, str]
    generation: str
    default_system: Optional[str]

    def render(self, messages: list[dict], system: Optional[str]) -> str:
        """What the Go template below produces (Ollama passes the system prompt apart from the messages)."""
        out = f"{self.pre['system']}{system}{self.suf['system']}" if system else ""
        for m in messages:
            out += f"{self.pre[m['role']]}{m['content']}{self.suf[m['role']]}"
        return out + self.generation

    def go_template(self) -> str:
        def q(s: str) -> str:
            return s.replace("{{", "{{ \"{{\" }}")

        # no "{{-": it would trim the newlines the turns end with
        return ("{{ if .System }}" + q(self.pre["system"]) + "{{ .System }}" + q(self.suf["system"]) + "{{ end }}"
                "{{ range .Messages }}"
                "{{ if eq .Role \"user\" }}" + q(self.pre["user"]) + "{{ .Content }}" + q(self.suf["user"]) +
                "{{ else if eq .Role \"assistant\" }}" + q(self.pre["assistant"]) + "{{ .Content }}" +
                q(self.suf["assistant"]) + "{{ end }}{{ end }}" + q(self.generation))


def _render(tokenizer, messages: list[dict], generation: bool = True) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    bos = getattr(tokenizer, "bos_token", None)
    adds_bos = bool(bos) and tokenizer.encode("a")[:1] == [tokenizer.bos_token_id]
    return text[len(bos):] if adds_bos and text.startswith(bos) else text  # llama.cpp adds that BOS itself


def _split(gap: str, role: str, specials: list[str]) -> int:
    """Where the next role's prefix begins in the text between two contents: at the last special token
    before the role's name (or the last special token, for templates that do not spell roles)."""
    at = gap.rfind(role)
    head = gap[:at] if at >= 0 else gap
    starts = [head.rfind(s) for s in specials if head.rfind(s) >= 0]
    return max(starts) if starts else (at if at >= 0 else len(gap))


def read_turns(tokenizer) -> Turns:
    S, U, A = MARK["system"], MARK["user"], MARK["assistant"]
    specials = sorted({t for t in getattr(tokenizer, "all_special_tokens", []) if t}, key=len, reverse=True)
    try:
        full = _render(tokenizer, [{"role": "system", "content": S}, {"role": "user", "content": U},
                                   {"role": "assistant", "content": A}, {"role": "user", "content": U}])
        alone = _render(tokenizer, [{"role": "user", "content": U}])
    except Exception as e:  # noqa: BLE001 - a template that refuses a system message, say
        raise TemplateError(f"The chat template could not render a plain conversation ({e}); write the Modelfile's "
                            "TEMPLATE by hand (llama.cpp and LM Studio read the template from the GGUF).") from None
    try:
        i_s, i_u1, i_a = full.index(S), full.index(U), full.index(A)
        i_u2 = full.index(U, i_a)
    except ValueError:
        raise TemplateError("The chat template drops or rewrites message text, so it cannot be translated to "
                            "Ollama's template; write the Modelfile's TEMPLATE by hand.") from None
    g1, g2, g3, tail = full[i_s + len(S):i_u1], full[i_u1 + len(U):i_a], full[i_a + len(A):i_u2], full[i_u2 + len(U):]
    c1, c2, c3 = _split(g1, "user", specials), _split(g2, "assistant", specials), _split(g3, "user", specials)
    c4 = _split(tail, "assistant", specials)
    pre = {"system": full[:i_s], "user": g1[c1:], "assistant": g2[c2:]}
    suf = {"system": g1[:c1], "user": g2[:c2], "assistant": g3[:c3]}
    generation = tail[c4:]
    default = None
    if alone.startswith(pre["system"]) and not alone.startswith(pre["user"]):
        body = alone[len(pre["system"]):]
        end = body.find(suf["system"] + pre["user"]) if suf["system"] else -1
        if end > 0:
            default = body[:end]
    turns = Turns(pre, suf, generation, default)
    checks = [
        ([{"role": "user", "content": "Olá"}], None),
        ([{"role": "user", "content": "Quem?"}, {"role": "assistant", "content": "O Farense."},
          {"role": "user", "content": "Quando?"}], "Responde em português."),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
         None),
    ]
    for messages, system in checks:
        want = _render(tokenizer, ([{"role": "system", "content": system}] if system else []) + messages)
        got = turns.render(messages, system or default)
        if got != want:
            raise TemplateError("The chat template does not follow a prefix-content-suffix pattern Ollama's template "
                                "can express; write the Modelfile's TEMPLATE by hand (llama.cpp and LM Studio read "
                                "the template from the GGUF).")
    return turns


def _quoted(text: str) -> str:
    if '"""' in text:
        raise TemplateError('The chat template holds """, which a Modelfile cannot quote; write it by hand.')
    return f'"""{text}"""'


def modelfile(gguf_name: str, tokenizer, stops: list[str]) -> str:
    turns = read_turns(tokenizer)
    lines = [f"FROM ./{gguf_name}", "", f"TEMPLATE {_quoted(turns.go_template())}", ""]
    if turns.default_system:
        lines += [f"SYSTEM {_quoted(turns.default_system)}", ""]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER temperature {SAMPLER['temperature']}", f"PARAMETER top_p {SAMPLER['top_p']}",
              f"PARAMETER min_p {SAMPLER['min_p']}", f"PARAMETER repeat_penalty {SAMPLER['repetition_penalty']}",
              f"PARAMETER repeat_last_n {SAMPLER['repetition_context_size']}"]
    return "\n".join(lines) + "\n"
