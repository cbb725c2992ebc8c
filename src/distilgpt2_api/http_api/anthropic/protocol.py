"""Anthropic's Messages API shapes, the subset this service implements.

`MessagesRequest.to_generation_request` is the one translation point of this API: the conversation (`system`,
text, `tool_use` and `tool_result` blocks) becomes the core's chat messages, rendered with the model's chat template
(core/chat.py); `tools` and `tool_choice` become the grammar of core/tools.py, as in OpenAI's chat. `MessageResponse`
and `MessageEvents` read text and tool calls back out of the answer, whole or as Anthropic's named events.
"""

from __future__ import annotations

import json
import uuid
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, RootModel, Tag, create_model, model_validator
from sse_starlette import ServerSentEvent

from distilgpt2_api.core.chat import ChatMessage, ChatTemplate
from distilgpt2_api.core.errors import ModelNotFound
from distilgpt2_api.core.grammar import Grammar
from distilgpt2_api.core.request import GREEDY, GenerationRequest, SamplingParams
from distilgpt2_api.core.sequence import Delta
from distilgpt2_api.core.stream import Completion, GenerationResult
from distilgpt2_api.core.tools import (
    FunctionTool,
    ToolCall,
    ToolCallDelta,
    ToolCallStream,
    parse_tool_calls,
    tool_grammar,
)
from distilgpt2_api.http_api.openai.chat_protocol import MAX_MESSAGES, MAX_TOOLS, FunctionName
from distilgpt2_api.http_api.protocol import (
    GREEDY_BELOW_TEMPERATURE,
    Bounds,
    ErrorResponse,
    StopList,
    StrictModel,
    TopP,
)

if TYPE_CHECKING:
    from distilgpt2_api.http_api.streaming import StreamTally

ANTHROPIC_PATH = "/v1/messages"  # this path and those under it answer errors in Anthropic's shape
MAX_BLOCKS = 256  # content blocks in one message
BLOCK_TYPES = ("text", "tool_use", "tool_result")
JOIN = "\n\n"  # between the text blocks of one turn
ModelName = Annotated[str, Field(min_length=1, max_length=256)]


class CacheControl(StrictModel):
    """Accepted for Anthropic clients: the prefix cache reuses any prompt's beginning by itself."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(StrictModel):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: None = Field(None, description="Accepted when null, as answers from Anthropic carry it.")


class ToolUseBlock(StrictModel):
    """A call an earlier assistant turn made (as this API returned it)."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: FunctionName
    input: dict[str, Any]
    cache_control: CacheControl | None = None


def _text_or_blocks(value: Any) -> str:
    return "text" if isinstance(value, str) else "blocks"


def text_or(blocks: Any, text: Any = str) -> Any:
    """`text | blocks`, validated as the one the input is (a text or a list), so errors name that one only."""
    return Annotated[Annotated[text, Tag("text")] | Annotated[blocks, Tag("blocks")], Discriminator(_text_or_blocks)]


def _only_supported_blocks(data: Any, allowed: tuple[str, ...]) -> None:
    """A clear refusal of a block type this server does not read (`image`, `document`, `thinking`...)."""
    blocks = data.get("content") if isinstance(data, dict) else None
    for block in blocks if isinstance(blocks, list) else ():
        kind = block.get("type") if isinstance(block, dict) else None
        if isinstance(kind, str) and kind not in allowed:
            raise ValueError(
                f"content blocks of type {kind!r} are not supported by this server (only {', '.join(allowed)})"
            )


class ToolResultBlock(StrictModel):
    """What a call returned; a user turn carries it."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: text_or(list[TextBlock]) | None = None  # type: ignore[valid-type]
    is_error: bool = Field(False, description="The call failed: its result is shown to the model as an error.")
    cache_control: CacheControl | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        _only_supported_blocks(data, ("text",))
        return data

    def text(self) -> str:
        content = self.content
        text = "" if content is None else content if isinstance(content, str) else JOIN.join(b.text for b in content)
        return f"Error: {text}" if self.is_error else text


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class Message(StrictModel):
    role: Literal["user", "assistant"]
    content: text_or(Annotated[list[ContentBlock], Field(min_length=1, max_length=MAX_BLOCKS)])  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _known_blocks(cls, data: Any) -> Any:
        _only_supported_blocks(data, BLOCK_TYPES)
        return data

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> Message:
        wrong, name, home = (
            (ToolUseBlock, "tool_use", "assistant") if self.role == "user" else (ToolResultBlock, "tool_result", "user")
        )
        if any(isinstance(block, wrong) for block in self.blocks):
            raise ValueError(f"{name} blocks belong in {home} turns")
        return self

    @property
    def blocks(self) -> list[TextBlock | ToolUseBlock | ToolResultBlock]:
        return [] if isinstance(self.content, str) else self.content

    @property
    def text(self) -> str:
        content = self.content
        return content if isinstance(content, str) else JOIN.join(b.text for b in content if isinstance(b, TextBlock))

    def to_chat_messages(self) -> list[ChatMessage]:
        """The turn in the core's words: an assistant turn with its calls; a user turn's results as `tool` turns
        (in their order), then its text."""
        if self.role == "assistant":
            calls = [b for b in self.blocks if isinstance(b, ToolUseBlock)]
            wire = tuple(ToolCall(c.id, c.name, json.dumps(c.input, ensure_ascii=False)) for c in calls)
            return [ChatMessage("assistant", self.text, tool_calls=wire)]
        results = [
            ChatMessage("tool", b.text(), tool_call_id=b.tool_use_id)
            for b in self.blocks
            if isinstance(b, ToolResultBlock)
        ]
        text = self.text
        return [*results, ChatMessage("user", text)] if text or not results else results


class Tool(StrictModel):
    """A function the model may call (a client tool; Anthropic's server tools are not served)."""

    type: Literal["custom"] | None = None
    name: FunctionName
    description: str | None = None
    input_schema: dict[str, Any] = Field(
        description="A JSON Schema of the input (an object); the calls made always validate against it."
    )
    cache_control: CacheControl | None = None
    strict: bool | None = Field(None, description="Accepted for Anthropic clients: inputs always follow the schema.")

    def to_tool(self) -> FunctionTool:
        return FunctionTool(self.name, self.description, self.input_schema)


class ToolChoiceAuto(StrictModel):
    """Text or calls (the default with tools)."""

    type: Literal["auto"]
    disable_parallel_tool_use: bool = Field(False, description="At most one call.")


class ToolChoiceAny(StrictModel):
    """At least one call, to any of the tools."""

    type: Literal["any"]
    disable_parallel_tool_use: bool = Field(False, description="Exactly one call.")


class ToolChoiceTool(StrictModel):
    """Exactly one call, to this tool."""

    type: Literal["tool"]
    name: FunctionName
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(StrictModel):
    """Text only: the tools are not offered."""

    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class MessagesInput(StrictModel):
    """What the model reads: `POST /v1/messages/count_tokens` takes this much (as Anthropic's does)."""

    model: ModelName = Field(description="The served model's name (`GET /v1/models`).")
    system: text_or(list[TextBlock]) | None = Field(None, description="The system prompt: a text, or text blocks.")  # type: ignore[valid-type]
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)] = Field(
        description="The conversation. A last assistant turn (text only) is a prefill: the answer continues it."
    )
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="Functions the model may call (ENGINE=llamacpp); calls come back as tool_use blocks."
    )
    tool_choice: ToolChoice | None = None
    cache_control: CacheControl | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MessagesInput:
        if self.tool_choice is not None and self.tool_choice.type != "none" and not self.tools:
            raise ValueError("tool_choice needs tools")
        last = self.messages[-1]
        if last.role == "assistant" and any(isinstance(b, ToolUseBlock) for b in last.blocks):
            raise ValueError("the last message is an assistant turn with tool_use: send its tool_result first")
        return self

    @cached_property
    def offered_tools(self) -> tuple[FunctionTool, ...]:
        """The tools the model is told of and may call: none with tool_choice `none`. Built once."""
        if not self.tools or (self.tool_choice is not None and self.tool_choice.type == "none"):
            return ()
        return tuple(tool.to_tool() for tool in self.tools)

    @property
    def prefill(self) -> str:
        """A last assistant turn's text, which the answer continues; "" if the last turn is the user's."""
        last = self.messages[-1]
        return last.text if last.role == "assistant" else ""

    def prompt(self, template: ChatTemplate) -> str:
        """The conversation as the model sees it: rendered with its chat template, up to where its answer starts."""
        system = self.system
        text = system if system is None or isinstance(system, str) else JOIN.join(block.text for block in system)
        messages = [] if text is None else [ChatMessage("system", text)]
        turns = self.messages[:-1] if self.messages[-1].role == "assistant" else self.messages
        messages += [chat_message for turn in turns for chat_message in turn.to_chat_messages()]
        return template.render(messages, self.offered_tools) + self.prefill

    def check_model(self, served: str, *, any_name: bool) -> None:
        """ModelNotFound (a 404) unless `model` names the served model (or any name is served)."""
        if self.model != served and not any_name:
            raise ModelNotFound(f"model {self.model!r} is not served here; use {served!r}")


class Metadata(StrictModel):
    user_id: str | None = Field(None, max_length=256, description="Accepted and not used.")


class MessagesRequest(MessagesInput):
    """Anthropic `POST /v1/messages`; `messages_request_models` bounds it from the settings."""

    max_tokens: int = Field(description="The most tokens the answer may have.")
    stop_sequences: StopList | None = None
    temperature: float = Field(1.0, ge=0.0, le=1.0, description=f"Below {GREEDY_BELOW_TEMPERATURE}: greedy decoding.")
    top_p: TopP | None = None
    top_k: int | None = Field(None, ge=1, le=100_000)
    metadata: Metadata | None = None
    stream: bool = Field(False, description="Server-Sent Events, named as Anthropic names them.")

    def answer_grammar(self) -> Grammar | None:
        """What the answer must match with tools: calls as tool_choice asks (or text, with `auto`)."""
        tools, choice = self.offered_tools, self.tool_choice or ToolChoiceAuto(type="auto")
        if not tools or isinstance(choice, ToolChoiceNone):
            return None
        name = choice.name if isinstance(choice, ToolChoiceTool) else {"auto": "auto", "any": "required"}[choice.type]
        text = tool_grammar(tools, name, parallel=not choice.disable_parallel_tool_use)
        return None if text is None else Grammar("lark", text, param="tools")

    def sampling(self) -> SamplingParams:
        if self.temperature < GREEDY_BELOW_TEMPERATURE:
            return GREEDY
        return SamplingParams(
            do_sample=True, temperature=self.temperature, top_p=self.top_p or 1.0, top_k=self.top_k or 0
        )

    def to_generation_request(self, template: ChatTemplate, *, deadline: float | None) -> GenerationRequest:
        """This API's one translation into the core's request."""
        return GenerationRequest(
            prompt=self.prompt(template),
            max_new_tokens=self.max_tokens,
            sampling=self.sampling(),
            stop=tuple(self.stop_sequences or ()),
            deadline=deadline,
            add_special_tokens=False,  # the template wrote them
            grammar=self.answer_grammar(),
            model=self.model,
        )


def messages_request_models(bounds: Bounds) -> tuple[type[MessagesRequest], type[MessagesInput]]:
    """`MessagesRequest` and `MessagesInput` with the settings' limits on every text and on max_tokens."""
    text = create_model("TextBlock", __base__=TextBlock, __module__=__name__, text=(bounds.prompt, ...))
    result = create_model(
        "ToolResultBlock",
        __base__=ToolResultBlock,
        __module__=__name__,
        content=(text_or(list[text], bounds.prompt) | None, None),  # type: ignore[valid-type]
    )
    blocks = Annotated[
        list[Annotated[text | ToolUseBlock | result, Field(discriminator="type")]],
        Field(min_length=1, max_length=MAX_BLOCKS),
    ]  # type: ignore[valid-type]
    message = create_model(
        "Message", __base__=Message, __module__=__name__, content=(text_or(blocks, bounds.prompt), ...)
    )
    fields: dict[str, Any] = {
        "system": (text_or(list[text], bounds.prompt) | None, None),  # type: ignore[valid-type]
        "messages": (Annotated[list[message], Field(min_length=1, max_length=MAX_MESSAGES)], ...),  # type: ignore[valid-type]
    }
    counted = create_model("MessagesInput", __base__=MessagesInput, __module__=__name__, **fields)
    request = create_model(
        "MessagesRequest",
        __base__=MessagesRequest,
        __module__=__name__,
        max_tokens=(bounds.max_new_tokens, ...),
        **fields,
    )
    return request, counted


# ---- responses ----

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str = Field(description="`toolu_` and 24 letters and digits; a tool_result names it.")
    name: str
    input: dict[str, Any]

    @classmethod
    def of(cls, call: ToolCall) -> ToolUseOut:
        return cls(id=tool_use_id(call.id), name=call.name, input=json.loads(call.arguments))


ContentOut = Annotated[TextOut | ToolUseOut, Field(discriminator="type")]


def tool_use_id(call_id: str) -> str:
    """A call's id in Anthropic's shape: the core's `call_…` as `toolu_…`."""
    return "toolu_" + call_id.removeprefix("call_")


def stop_reason(finish_reason: str, stop_sequence: str | None, *, called: bool) -> StopReason:
    """Anthropic's reason for an answer's end: a time limit reads as `max_tokens`, a completed call as `tool_use`."""
    if finish_reason in ("length", "time_limit"):
        return "max_tokens"
    if called:
        return "tool_use"
    return "end_turn" if stop_sequence is None else "stop_sequence"


class MessagesUsage(BaseModel):
    input_tokens: int = Field(description="Prompt tokens computed (those the prefix cache held are apart).")
    output_tokens: int
    cache_creation_input_tokens: int = Field(0, description="Always 0: caching a prompt costs nothing extra here.")
    cache_read_input_tokens: int = Field(0, description="Prompt tokens read from the prefix cache.")

    @classmethod
    def of(cls, prompt_tokens: int, output_tokens: int, cached_tokens: int) -> MessagesUsage:
        return cls(
            input_tokens=prompt_tokens - cached_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=cached_tokens,
        )


class MessageResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentOut]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessagesUsage

    @classmethod
    def of(cls, model: str, result: GenerationResult, tools: tuple[FunctionTool, ...]) -> MessageResponse:
        """The answer: its text, then the calls read out of it (with tools)."""
        (completion,) = result.completions
        text, calls = parse_tool_calls(completion.text, tools) if tools else (completion.text, [])
        content: list[TextOut | ToolUseOut] = [TextOut(text=text)] if text else []
        content += [ToolUseOut.of(call) for call in calls]
        return cls(
            model=model,
            content=content,
            **_ending(completion, called=bool(calls)),
            usage=MessagesUsage.of(result.prompt_tokens, completion.completion_tokens, result.timings.cached_tokens),
        )


def _ending(end: Completion | Delta, *, called: bool) -> dict[str, Any]:
    """`stop_reason` and `stop_sequence` of an answer's end (its completion, or its last delta)."""
    reason = stop_reason(end.finish_reason or "", end.stop_sequence, called=called)
    return {"stop_reason": reason, "stop_sequence": end.stop_sequence if reason == "stop_sequence" else None}


class TokenCount(BaseModel):
    input_tokens: int = Field(description="The prompt's tokens: the conversation as the chat template renders it.")


# ---- errors ----

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]
_ERROR_TYPES: dict[int, ErrorType] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class AnthropicError(BaseModel):
    type: ErrorType
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicError
    request_id: str | None = None


def anthropic_error(status_code: int, message: str, request_id: str) -> tuple[int, AnthropicErrorResponse]:
    """The status and body of an error on this API's paths: a validation error (422) is a 400, as Anthropic's."""
    status_code = 400 if status_code == 422 else status_code
    kind = _ERROR_TYPES.get(status_code, "invalid_request_error" if status_code < 500 else "api_error")
    return status_code, AnthropicErrorResponse(error=AnthropicError(type=kind, message=message), request_id=request_id)


# ---- streaming ----


class ContentBlockStart(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentOut


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str = Field(description="The next piece of a tool_use block's input, as JSON text.")


class ContentBlockDelta(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Annotated[TextDelta | InputJsonDelta, Field(discriminator="type")]


class ContentBlockStop(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageStart(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: MessageResponse


class Ping(BaseModel):
    type: Literal["ping"] = "ping"


class MessageDeltaBody(BaseModel):
    stop_reason: StopReason
    stop_sequence: str | None


class DeltaUsage(BaseModel):
    output_tokens: int


class MessageDelta(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody
    usage: DeltaUsage


class MessageStop(BaseModel):
    type: Literal["message_stop"] = "message_stop"


class MessageStreamEvent(RootModel[Any]):
    """The data of each event of a streamed message; the event's name is its `type`."""

    root: (
        MessageStart
        | ContentBlockStart
        | ContentBlockDelta
        | ContentBlockStop
        | MessageDelta
        | MessageStop
        | Ping
        | AnthropicErrorResponse
    )


def _named(event: BaseModel) -> ServerSentEvent:
    return ServerSentEvent(data=event.model_dump_json(), event=event.type)  # type: ignore[attr-defined]


class MessageEvents:
    """A streamed message's events, as Anthropic sends them: message_start (and a ping); each content block's
    start, deltas and stop (text, or a tool_use block whose input streams as JSON pieces); message_delta with the
    stop reason and usage; message_stop."""

    def __init__(self, model: str, body: MessagesRequest) -> None:
        self._model = model
        self._reader = ToolCallStream(body.offered_tools) if body.offered_tools else None
        self._block: Literal["text", "tool_use"] | None = None  # the open content block's kind
        self._index = -1  # the open (or last) content block's index
        self._started = False
        self._called = False
        self._end: Delta | None = None  # the answer's last delta

    def delta(self, delta: Delta, tally: StreamTally) -> list[ServerSentEvent]:
        events: list[BaseModel] = []
        if not self._started:
            self._started = True
            usage = MessagesUsage.of(tally.prompt_tokens, 0, tally.cached_tokens)
            start = MessageResponse(model=self._model, content=[], stop_reason=None, stop_sequence=None, usage=usage)
            events += [MessageStart(message=start), Ping()]
        if self._reader is None:
            pieces = [ToolCallDelta(content=delta.text)]
        else:
            pieces = self._reader.feed(delta.text) + (self._reader.finish() if delta.finish_reason else [])
        for piece in pieces:
            events += self._piece(piece)
        if delta.finish_reason is not None:
            self._end = delta
            if self._block is not None:
                events.append(ContentBlockStop(index=self._index))
        return [_named(event) for event in events]

    def _piece(self, piece: ToolCallDelta) -> list[BaseModel]:
        if piece.index is None:
            if not piece.content:
                return []
            opened = self._open("text", TextOut(text="")) if self._block != "text" else []
            return [*opened, ContentBlockDelta(index=self._index, delta=TextDelta(text=piece.content))]
        events: list[BaseModel] = []
        if piece.id is not None:  # a new call: its block, with its id and name
            self._called = True
            events += self._open("tool_use", ToolUseOut(id=tool_use_id(piece.id), name=piece.name or "", input={}))
        if piece.arguments:
            events.append(ContentBlockDelta(index=self._index, delta=InputJsonDelta(partial_json=piece.arguments)))
        return events

    def _open(self, kind: Literal["text", "tool_use"], block: TextOut | ToolUseOut) -> list[BaseModel]:
        events: list[BaseModel] = [ContentBlockStop(index=self._index)] if self._block is not None else []
        self._block, self._index = kind, self._index + 1
        return [*events, ContentBlockStart(index=self._index, content_block=block)]

    def end(self, tally: StreamTally) -> list[ServerSentEvent]:
        assert self._end is not None  # the stream ended with its one answer's last delta
        body = MessageDeltaBody(**_ending(self._end, called=self._called))
        usage = DeltaUsage(output_tokens=sum(tally.completion_tokens.values()))
        return [_named(MessageDelta(delta=body, usage=usage)), _named(MessageStop())]

    def error(self, error: ErrorResponse) -> list[ServerSentEvent]:
        """An error after the stream began, as Anthropic's `error` event: the time budget running out while
        queued is `overloaded_error`, anything else `api_error`."""
        kind: ErrorType = "overloaded_error" if error.error.code == "deadline_exceeded" else "api_error"
        body = AnthropicErrorResponse(
            error=AnthropicError(type=kind, message=error.error.message), request_id=error.request_id
        )
        return [_named(body)]
