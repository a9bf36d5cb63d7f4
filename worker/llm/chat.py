"""Chat prompts: messages rendered through the model's chat template, outside the engine.

The engine only ever sees a prompt string. Chat templates put control tokens
(`<start_of_turn>`, ...) into that string, so chat prompts are tokenized with special
parsing on. Untrusted text (the input, batch messages) must then never be able to
spell a control token itself: `neutralize` breaks every control-token string in it
with an invisible WORD JOINER, so it tokenizes as plain text. (The alternative,
tokenizing template and input separately, would need an engine interface that takes
token spans; a plain string keeps the batched engine simple.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from worker.errors import InputError

WORD_JOINER = "\u2060"
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"

# For models without a chat template (base models such as the default Gemma 3 270M):
# a plain transcript that a pre-trained model continues naturally.
TRANSCRIPT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content ~ '\\n\\n' }}"
    "{% elif m.role == 'user' %}{{ 'User: ' ~ m.content ~ '\\n' }}"
    "{% else %}{{ 'Assistant: ' ~ m.content ~ '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
TRANSCRIPT_STOP = ("\nUser:", "\nAssistant:")
ROLES = ("system", "user", "assistant", "developer")


@runtime_checkable
class ChatModel(Protocol):
    """What chat templating needs from an engine."""

    @property
    def metadata(self) -> Mapping[str, str]: ...

    @property
    def control_tokens(self) -> frozenset[str]: ...


class ChatError(InputError):
    """The messages cannot be rendered (bad role or content, template error)."""


def _raise(message: str) -> None:
    raise ChatError(f"chat template refused the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now(UTC).strftime(fmt)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


@lru_cache(maxsize=8)
def _control_pattern(tokens: frozenset[str]) -> re.Pattern[str] | None:
    # One character cannot be split; such tokens do not occur in known vocabularies.
    breakable = sorted((t for t in tokens if len(t) >= 2), key=len, reverse=True)
    if not breakable:
        return None
    return re.compile("|".join(re.escape(t) for t in breakable))


def neutralize(text: str, control_tokens: frozenset[str]) -> str:
    """`text` with every control-token string broken by a WORD JOINER after its first char."""
    pattern = _control_pattern(control_tokens)
    if pattern is None:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)


def neutralize_value(value: Any, control_tokens: frozenset[str]) -> Any:
    """`neutralize` applied to every string inside a JSON-like value."""
    if isinstance(value, str):
        return neutralize(value, control_tokens)
    if isinstance(value, Mapping):
        return {k: neutralize_value(v, control_tokens) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [neutralize_value(v, control_tokens) for v in value]
    return value


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template and how prompts made with it must be tokenized."""

    template: str
    source: str  # "gguf", "config" or "built-in"
    control_tokens: frozenset[str] = frozenset()
    eos_token: str = ""
    stop: tuple[str, ...] = ()

    @property
    def special(self) -> bool:
        """Whether prompts must be tokenized with control-token parsing on."""
        return self.source != "built-in"

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for `messages`, ending where the assistant's answer begins.

        Message contents are untrusted: control-token strings in them are neutralized.
        """
        safe = []
        for message in messages:
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise ChatError(f"unsupported message role {role!r} (use one of {ROLES})")
            if not isinstance(content, str):
                raise ChatError(f"message content must be text, got {type(content).__name__}")
            # Templates know system/user/assistant; OpenAI's "developer" is a system message.
            role = "system" if role == "developer" else role
            safe.append({"role": role, "content": neutralize(content, self.control_tokens)})
        try:
            # bos_token is left out: the engine adds BOS itself when tokenizing.
            return str(
                _compile(self.template).render(
                    messages=safe,
                    add_generation_prompt=True,
                    bos_token="",
                    eos_token=self.eos_token,
                )
            )
        except ChatError:
            raise
        except TemplateError as exc:
            raise ChatError(f"chat template failed: {exc}") from None


def chat_template_for(model: ChatModel, override: str | None = None) -> ChatTemplate:
    """The chat template in effect: the configured one, the GGUF's own, or the transcript."""
    template, source = override, "config"
    if template is None:
        template, source = model.metadata.get(CHAT_TEMPLATE_KEY), "gguf"
    if template is None:
        return ChatTemplate(TRANSCRIPT_TEMPLATE, "built-in", stop=TRANSCRIPT_STOP)
    try:
        _compile(template)
    except TemplateError as exc:
        raise ChatError(f"the {source} chat template does not compile: {exc}") from None
    return ChatTemplate(template, source, control_tokens=model.control_tokens)
