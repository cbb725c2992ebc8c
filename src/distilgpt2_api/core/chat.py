"""Chat prompts: a conversation rendered with the model's own chat template, as Hugging Face renders it.

A sandboxed Jinja environment with the same settings and helpers transformers gives templates
(`trim_blocks`, `lstrip_blocks`, `raise_exception`, `tojson`, `strftime_now`), and
`add_generation_prompt=True` so the model answers as the assistant. No torch, no transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NoReturn

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from distilgpt2_api.core.errors import ChatTemplateFailed

Role = Literal["system", "developer", "user", "assistant"]
# OpenAI's `developer` role succeeds `system`; chat templates know only `system`.
TEMPLATE_ROLES = {"developer": "system"}


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateFailed(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


class ChatTemplate:
    """A model's chat template, compiled once."""

    def __init__(self, source: str, special_tokens: dict[str, str]) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = environment.from_string(source)
        self._special_tokens = special_tokens

    def render(self, messages: list[ChatMessage]) -> str:
        """The prompt text for `messages`, ending where the assistant's answer starts."""
        conversation = [{"role": TEMPLATE_ROLES.get(m.role, m.role), "content": m.content} for m in messages]
        try:
            return self._template.render(messages=conversation, add_generation_prompt=True, **self._special_tokens)
        except TemplateError as error:
            raise ChatTemplateFailed(f"the model's chat template cannot render these messages: {error}") from error
