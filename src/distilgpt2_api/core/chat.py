"""Chat prompts: a conversation rendered with the model's own chat template, as Hugging Face renders it.

A sandboxed Jinja environment with the same settings and helpers transformers gives templates
(`trim_blocks`, `lstrip_blocks`, `raise_exception`, `tojson`, `strftime_now`), and
`add_generation_prompt=True` so the model answers as the assistant. No torch, no transformers.

Tools reach a template that knows them (it uses a `tools` variable) in Hugging Face's format. Other templates get
them in a generic form, in the messages themselves: a system block listing the tools and how to call them, calls as
the `<tool_call>` text the model writes (core/tools.py), and results as user turns in `<tool_response>` tags.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NoReturn

from jinja2 import TemplateError, meta
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from distilgpt2_api.core.errors import ChatTemplateFailed
from distilgpt2_api.core.tools import FunctionTool, ToolCall, format_tool_call

Role = Literal["system", "developer", "user", "assistant", "tool"]
# OpenAI's `developer` role succeeds `system`; chat templates know only `system`.
TEMPLATE_ROLES = {"developer": "system"}


@dataclass(frozen=True)
class ChatMessage:
    """One turn. An assistant turn may hold `tool_calls` (its content then often ""); a `tool` turn is the result
    of the call `tool_call_id`."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


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
        self._knows_tools = "tools" in meta.find_undeclared_variables(environment.parse(source))

    @property
    def knows_tools(self) -> bool:
        """Whether the template renders tools itself (its source reads a `tools` variable), as tool-trained models'
        templates do; if not, `render` describes the tools in the messages (see the module's docstring)."""
        return self._knows_tools

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[FunctionTool] = ()) -> str:
        """The prompt text for `messages` (and the `tools` the model may call), ending where its answer starts."""
        if self._knows_tools:
            conversation = [_hf_message(m) for m in messages]
            extra = {"tools": [_hf_tool(tool) for tool in tools]} if tools else {}
        else:
            conversation = _generic_conversation(messages, tools)
            extra = {}
        try:
            return self._template.render(
                messages=conversation, add_generation_prompt=True, **extra, **self._special_tokens
            )
        except TemplateError as error:
            raise ChatTemplateFailed(f"the model's chat template cannot render these messages: {error}") from error


def _hf_tool(tool: FunctionTool) -> dict[str, Any]:
    """A tool as transformers' apply_chat_template passes it to templates."""
    function = {"name": tool.name, "description": tool.description, "parameters": dict(tool.parameters)}
    return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


def _hf_message(message: ChatMessage) -> dict[str, Any]:
    """A message as transformers passes it: calls with their arguments as a dict, results with their call's id."""
    rendered: dict[str, Any] = {"role": TEMPLATE_ROLES.get(message.role, message.role), "content": message.content}
    if message.tool_calls:
        rendered["tool_calls"] = [
            {"type": "function", "id": call.id, "function": {"name": call.name, "arguments": _arguments(call)}}
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


def _arguments(call: ToolCall) -> dict[str, Any]:
    """A past call's arguments as a dict: templates read them so, and the client may have sent any text."""
    try:
        arguments = json.loads(call.arguments)
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ChatTemplateFailed(f"the arguments of tool call {call.id!r} are not a JSON object: {call.arguments!r}")
    return arguments


TOOLS_PROMPT = """# Tools

You may call one or more of the functions below. Their signatures, as JSON, are within <tools></tools> tags:
<tools>
{tools}
</tools>

To call a function, answer with a JSON object holding its name and arguments within <tool_call></tool_call> tags:
<tool_call>
{{"name": <function-name>, "arguments": <arguments-json-object>}}
</tool_call>"""
"""The system block that teaches tools to a template that does not know them, modelled on Hermes/Qwen's."""


def _wire_text(call: ToolCall) -> str:
    """A past call as the model would have written it under the grammar: compact arguments."""
    return format_tool_call(call.name, json.dumps(_arguments(call), ensure_ascii=False))


def _generic_conversation(messages: Sequence[ChatMessage], tools: Sequence[FunctionTool]) -> list[dict[str, Any]]:
    """Messages with the tools described in them, for a template without `tools`.

    The tools block joins the conversation's first system message (after a blank line) or becomes a new first
    one; calls become their wire text after the assistant's content; a result becomes a user turn in
    `<tool_response>` tags. Without tools or tool turns, the messages are exactly what they were.
    """
    conversation: list[dict[str, Any]] = []
    for message in messages:
        role, content = TEMPLATE_ROLES.get(message.role, message.role), message.content
        if message.tool_calls:
            calls = [_wire_text(call) for call in message.tool_calls]
            content = "\n".join([content, *calls] if content else calls)
        if role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        conversation.append({"role": role, "content": content})
    if tools:
        block = TOOLS_PROMPT.format(tools="\n".join(json.dumps(_hf_tool(tool), ensure_ascii=False) for tool in tools))
        if conversation and conversation[0]["role"] == "system":
            conversation[0] = {"role": "system", "content": f"{conversation[0]['content']}\n\n{block}"}
        else:
            conversation.insert(0, {"role": "system", "content": block})
    return conversation
