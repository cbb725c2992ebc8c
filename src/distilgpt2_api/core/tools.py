"""Tool calls: the functions a chat request offers, the text the model writes to call them, and how it is read.

The model writes each call in the Hermes/Qwen format that many tool-aware chat templates teach:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Parallel calls follow one another, separated by "\\n". `tool_grammar` gives the Lark grammar (for llguidance) that
forces this format, `parse_tool_calls` reads a finished answer and `ToolCallStream` reads one as it streams.
Nothing here needs the model: these are text in, text out.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from distilgpt2_api.core.errors import InvalidRequest
from distilgpt2_api.core.schema import prepare_schema

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
CALL_SEPARATOR = "\n"

ToolChoice = Literal["none", "auto", "required"] | str
"""`none`, `auto`, `required`, or any other string: the name of the one function the model must call."""

# OpenAI's rule for function names; it also keeps them plain literals in the grammar.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _empty_object() -> Mapping[str, Any]:
    return {"type": "object", "properties": {}}


@dataclass(frozen=True)
class FunctionTool:
    """A function the model may call; `parameters` is the JSON Schema of its arguments (an object)."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=_empty_object)


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: `arguments` is JSON text of an object, as OpenAI sends it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """One piece of a streamed answer: either plain `content`, or a piece of call `index`.

    As OpenAI streams calls: a call's first delta has its `id` and `name` (and arguments ""), the later ones
    carry fragments of `arguments` that concatenate to its JSON text.
    """

    index: int | None = None
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    content: str = ""


class InvalidTools(InvalidRequest):
    """The request's tools or tool_choice cannot be turned into a grammar: a 400 before any generation."""

    code = "invalid_tools"
    param = "tools"

    def __init__(self, message: str, param: str = "tools") -> None:
        super().__init__(message)
        self.param = param


_CALL_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """A fresh call id in OpenAI's shape: `call_` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_CALL_ID_ALPHABET) for _ in range(24))


def format_tool_call(name: str, arguments: str) -> str:
    """The wire text of one call, exactly as the grammar makes the model write it."""
    return f'{OPEN_TAG}\n{{"name": {json.dumps(name)}, "arguments": {arguments}}}\n{CLOSE_TAG}'


# ---- the grammar ----


def tool_grammar(tools: Sequence[FunctionTool], choice: ToolChoice, *, parallel: bool) -> str | None:
    """The Lark grammar (llguidance's dialect) that makes the model answer as `choice` asks, or None for `none`.

    `required`: one call to any of the tools, or one or more with `parallel`. A named function: exactly one call
    to it. `auto`: either free text or the calls `required` allows. Free text must not begin with `<`, so the first
    character tells the two apart and a text answer can never be a half-written call.

    Each call is `{"name": ..., "arguments": ...}` in that order; the arguments follow the function's `parameters`
    schema in compact JSON (", " and ": " separators, no other whitespace), so they stream and parse as written.
    Raises InvalidTools naming the function whose schema llguidance cannot compile (each schema checked once).
    """
    if choice == "none":
        return None
    _check_tools(tools)
    if choice in ("auto", "required"):
        offered = list(enumerate(tools))
    else:
        named = [(i, tool) for i, tool in enumerate(tools) if tool.name == choice]
        if not named:
            raise InvalidTools(f"tool_choice names function {choice!r}, which is not among the tools", "tool_choice")
        offered, parallel = named, False
    rules = [f"call: {' | '.join(f'call_{i}' for i, _ in offered)}"]
    for i, tool in offered:
        rules.append(_call_rules(i, tool))
    calls = f"call ({_lark_string(CALL_SEPARATOR)} call)*" if parallel else "call"
    start = "start: calls | TEXT?\nTEXT: /[^<](?s:.)*/" if choice == "auto" else "start: calls"
    # Compiled (and checked whole) by the scheduler's grammar cache, once per set of tools.
    return "\n".join(["%llguidance {}", start, f"calls: {calls}", *rules]) + "\n"


def grammar_error(grammar: str) -> str | None:
    """llguidance's reason for refusing Lark `grammar` (its position and excerpt left out), or None if it compiles."""
    import llguidance  # only where tools are served (the llama.cpp engine): other images do not hold it

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        llguidance.LLMatcher.grammar_from_lark(grammar)
    )
    if not is_error:
        return None
    message = re.sub(r"^at \d+\(\d+\): ", "", messages[0])
    excerpt = re.search(r"\n\s+\d+ \| ", message)  # the grammar's lines it quotes: ours, not the caller's
    return (message[: excerpt.start()] if excerpt else message).strip()


def _check_tools(tools: Sequence[FunctionTool]) -> None:
    if not tools:
        raise InvalidTools("tool_choice asks for a tool call, but there are no tools", "tool_choice")
    seen: set[str] = set()
    for tool in tools:
        if not _NAME.fullmatch(tool.name):
            raise InvalidTools(f"function name {tool.name!r} must be 1 to 64 letters, digits, '_' or '-'")
        if tool.name in seen:
            raise InvalidTools(f"function {tool.name!r} is defined twice")
        seen.add(tool.name)
        kind = tool.parameters.get("type", "object")
        if kind != "object":
            raise InvalidTools(f"function {tool.name!r}: parameters must describe an object, not {kind!r}")
        error = _arguments_error(json.dumps(_arguments_schema(tool)))
        if error:
            raise InvalidTools(f"function {tool.name!r}: its parameters schema cannot be enforced: {error}")


@functools.lru_cache(maxsize=256)
def _arguments_error(schema: str) -> str | None:
    """Why llguidance cannot enforce the arguments schema `schema` (JSON text), or None: a client sends the same
    tools with every request, so each schema is checked once."""
    return grammar_error(f"start: args\nargs: %json {schema}\n")


def _arguments_schema(tool: FunctionTool) -> dict[str, Any]:
    """The parameters schema, as an object (JSON Schema would allow any value without "type"), written compactly."""
    return prepare_schema({"type": "object", **tool.parameters}, checked=False).grammar_schema


def _call_rules(index: int, tool: FunctionTool) -> str:
    head = _lark_string(f'{OPEN_TAG}\n{{"name": {json.dumps(tool.name)}, "arguments": ')
    tail = _lark_string(f"}}\n{CLOSE_TAG}")
    return f"call_{index}: {head} args_{index} {tail}\nargs_{index}: %json {json.dumps(_arguments_schema(tool))}"


def _lark_string(text: str) -> str:
    """A Lark string literal: JSON's escapes (\\n, \\", \\\\) are Lark's too."""
    return json.dumps(text)


# ---- reading a finished answer ----

# The canonical head of a call, as the grammar writes it (whitespace aside): the name first, then the arguments.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\{)')
_DECODER = json.JSONDecoder()


def parse_tool_calls(text: str, tools: Sequence[FunctionTool]) -> tuple[str | None, list[ToolCall]]:
    """A finished answer as (content, calls).

    Text without `<tool_call>` is all content. Otherwise the content is the text before the first call (None if
    blank) and every call must parse, name one of `tools` and be followed only by whitespace or another call;
    if not (an answer cut by `length`, a model without the grammar), the whole text is content and there are no
    calls. Arguments are kept as written when the call is in the canonical order, else re-serialized.
    """
    start = text.find(OPEN_TAG)
    if start < 0:
        return text, []
    names = {tool.name for tool in tools}
    calls: list[ToolCall] = []
    position = start
    while position < len(text):
        call = _parse_call(text, position, names) if text.startswith(OPEN_TAG, position) else None
        if call is None:
            return text, []
        name, arguments, position = call
        calls.append(ToolCall(new_call_id(), name, arguments))
        position += len(text[position:]) - len(text[position:].lstrip())
    return text[:start].rstrip() or None, calls


_CALL_END = re.compile(r"\s*\}\s*" + re.escape(CLOSE_TAG))


def _parse_call(text: str, start: int, names: set[str]) -> tuple[str, str, int] | None:
    """(name, arguments, where it ends) for the call whose `<tool_call>` is at `start`, or None if there is none.

    The canonical order (name, then arguments) keeps the arguments as written, so that they equal the streamed
    ones; a call in another order or form must still be one JSON object with exactly these two keys.
    """
    body = start + len(OPEN_TAG)
    head = _HEAD.match(text, body)
    if head:
        try:
            name = json.loads(head.group(1))
            _, end = _DECODER.raw_decode(text, head.end())
        except json.JSONDecodeError:
            return None
        tail = _CALL_END.match(text, end)
        if name not in names or tail is None:
            return None
        return name, text[head.end() : end], tail.end()
    end = text.find(CLOSE_TAG, body)
    if end < 0:
        return None
    try:
        call = json.loads(text[body:end])
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or set(call) != {"name", "arguments"}:
        return None
    if call["name"] not in names or not isinstance(call["arguments"], dict):
        return None
    return call["name"], json.dumps(call["arguments"], ensure_ascii=False), end + len(CLOSE_TAG)


# ---- reading an answer as it streams ----


class _JsonValueEnd:
    """Where a JSON object or array ends, fed a character at a time: brace depth, aware of strings and escapes."""

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, char: str) -> bool:
        """Take the next character; True when it closes the value."""
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            return self._depth == 0
        return False


class ToolCallStream:
    """Reads an answer as it is generated, giving OpenAI-style deltas: plain content, or calls piece by piece.

    Content streams as soon as it cannot be the start of a call: only a possible beginning of `<tool_call>` (and
    whitespace before it, which `parse_tool_calls` drops) is held back. A call in the canonical order streams its
    arguments as they come; the tags, the `{"name": ..., "arguments": ` wrapper and the closing `}` never show.
    For every answer `parse_tool_calls` reads as calls, the deltas add up to the same content and calls; an answer
    cut inside a call keeps what was already sent (as OpenAI's streams do), where `parse_tool_calls` gives content.
    """

    def __init__(self, tools: Sequence[FunctionTool]) -> None:
        self._names = {tool.name for tool in tools}
        self._buffer = ""  # text read but not yet given out
        self._state: Literal["text", "head", "arguments", "tail", "between"] = "text"
        self._calls = 0
        self._held_whitespace = ""  # whitespace dropped before the first `<tool_call>`
        self._scanner = _JsonValueEnd()

    def feed(self, text: str) -> list[ToolCallDelta]:
        """The deltas that `text`, the answer's next piece, makes certain."""
        self._buffer += text
        deltas: list[ToolCallDelta] = []
        steps = {
            "text": self._text,
            "head": self._head,
            "arguments": self._arguments,
            "tail": self._tail,
            "between": self._between,
        }
        while steps[self._state](deltas):  # each step reads what it can, and says whether the state changed
            pass
        return deltas

    def finish(self) -> list[ToolCallDelta]:
        """The deltas left when the answer ends: held-back text, or a first call cut before its name (as text)."""
        deltas = self.feed("")
        if self._state == "text" and self._buffer:
            deltas.append(ToolCallDelta(content=self._buffer))
        elif self._state == "head" and self._calls == 0:  # a cut or malformed first call: it was content after all
            deltas.append(ToolCallDelta(content=self._held_whitespace + OPEN_TAG + self._buffer))
        self._buffer = ""
        return deltas

    def _text(self, deltas: list[ToolCallDelta]) -> bool:
        start = self._buffer.find(OPEN_TAG)
        if start >= 0:
            before = self._buffer[:start]
            if before.rstrip():
                deltas.append(ToolCallDelta(content=before.rstrip()))
            self._held_whitespace = before[len(before.rstrip()) :]
            self._buffer = self._buffer[start + len(OPEN_TAG) :]
            self._state = "head"
            return True
        keep = _held_back(self._buffer)
        if keep < len(self._buffer):
            deltas.append(ToolCallDelta(content=self._buffer[: len(self._buffer) - keep]))
            self._buffer = self._buffer[len(self._buffer) - keep :]
        return False

    def _head(self, deltas: list[ToolCallDelta]) -> bool:
        head = _HEAD.match(self._buffer)
        if head and json.loads(head.group(1)) in self._names:
            deltas.append(ToolCallDelta(index=self._calls, id=new_call_id(), name=json.loads(head.group(1))))
            self._buffer = self._buffer[head.end() :]
            self._scanner = _JsonValueEnd()
            self._state = "arguments"
            return True
        end = self._buffer.find(CLOSE_TAG)
        if end < 0:
            return False
        call = _parse_call(OPEN_TAG + self._buffer, 0, self._names)  # another order or form: the whole call at once
        if call is None:  # not a call: give it out as text
            deltas.append(ToolCallDelta(content=OPEN_TAG + self._buffer[: end + len(CLOSE_TAG)]))
            self._buffer = self._buffer[end + len(CLOSE_TAG) :]
        else:
            name, arguments, call_end = call
            deltas.append(ToolCallDelta(index=self._calls, id=new_call_id(), name=name))
            deltas.append(ToolCallDelta(index=self._calls, arguments=arguments))
            self._calls += 1
            self._buffer = self._buffer[call_end - len(OPEN_TAG) :]
        self._state = "between"
        return True

    def _arguments(self, deltas: list[ToolCallDelta]) -> bool:
        for position, char in enumerate(self._buffer):
            if self._scanner.feed(char):
                fragment, self._buffer = self._buffer[: position + 1], self._buffer[position + 1 :]
                deltas.append(ToolCallDelta(index=self._calls, arguments=fragment))
                self._calls += 1
                self._state = "tail"
                return True
        if self._buffer:
            deltas.append(ToolCallDelta(index=self._calls, arguments=self._buffer))
            self._buffer = ""
        return False

    def _tail(self, deltas: list[ToolCallDelta]) -> bool:
        end = self._buffer.find(CLOSE_TAG)  # the wrapper's `}` and the closing tag: never shown
        if end < 0:
            return False
        self._buffer = self._buffer[end + len(CLOSE_TAG) :]
        self._state = "between"
        return True

    def _between(self, deltas: list[ToolCallDelta]) -> bool:
        rest = self._buffer.lstrip()
        if not rest:
            return False
        if len(rest) < len(OPEN_TAG) and OPEN_TAG.startswith(rest):
            return False
        if rest.startswith(OPEN_TAG):
            self._buffer = rest[len(OPEN_TAG) :]
            self._state = "head"
        else:  # text after the calls: not the format, but better shown than lost
            self._buffer = rest
            self._state = "text"
        return True


def _held_back(text: str) -> int:
    """How many characters at the end of `text` could still begin `<tool_call>`, with the whitespace before them."""
    partial = next((n for n in range(min(len(text), len(OPEN_TAG) - 1), 0, -1) if OPEN_TAG.startswith(text[-n:])), 0)
    before = text[: len(text) - partial]
    return partial + len(before) - len(before.rstrip())
