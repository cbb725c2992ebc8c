"""OpenAI's Responses API (`POST /v1/responses`), the subset a local text model can serve.

`ResponseRequest.to_generation_request` is this API's one translation point: the input items (after the stored
conversation a `previous_response_id` names) become chat turns rendered with the model's chat template, and `tools`
or `text.format` the grammar the answer must follow, as in chat completions (openai/chat_protocol.py). What a local
text model cannot do (hosted tools, images, files, reasoning) is a 400 naming it. `ResponseEvents` streams the answer
as OpenAI's named events; `output_items` reads a finished answer into output items.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, RootModel, StringConstraints, Tag, create_model

from distilgpt2_api.core.chat import ChatMessage, ChatTemplate
from distilgpt2_api.core.errors import InvalidRequest
from distilgpt2_api.core.grammar import Grammar
from distilgpt2_api.core.request import GREEDY, GenerationRequest, SamplingParams
from distilgpt2_api.core.sequence import Delta
from distilgpt2_api.core.stream import Completion, GenerationResult
from distilgpt2_api.core.tools import (
    FunctionTool,
    InvalidTools,
    ToolCall,
    ToolCallStream,
    parse_tool_calls,
    tool_grammar,
)
from distilgpt2_api.http_api.openai.chat_protocol import MAX_MESSAGES, MAX_TOOLS, FunctionName
from distilgpt2_api.http_api.openai.protocol import JsonObjectFormat, JsonSchemaSpec, TextFormat
from distilgpt2_api.http_api.protocol import GREEDY_BELOW_TEMPERATURE, Bounds, ErrorResponse, StrictModel, TopP
from distilgpt2_api.http_api.streaming import NamedEvent

if TYPE_CHECKING:
    from distilgpt2_api.http_api.streaming import StreamTally

MAX_PARTS = 64  # content parts in one message
MAX_METADATA_KEYS = 16
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_KEYS)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class Unsupported(InvalidRequest):
    """A part of OpenAI's API this server cannot serve with a local text model: a 400 naming it."""

    code = "unsupported_parameter"

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _tag(value: Any, known: tuple[str, ...], default: str | None = None) -> str:
    """The union member for `value`: its `type` if this server knows it, else `unsupported` (a 400 later)."""
    kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
    return kind if kind in known else "unsupported"


# ---- the request ----


class InputText(StrictModel):
    type: Literal["input_text"]
    text: str


class OutputText(StrictModel):
    """An earlier answer's text, as this API returned it (a client may send its output back as input)."""

    type: Literal["output_text"]
    text: str
    annotations: Annotated[list[dict[str, Any]], Field(max_length=0)] = Field(default_factory=list)
    logprobs: Annotated[list[dict[str, Any]], Field(max_length=0)] | None = None


class UnsupportedPart(BaseModel):
    """`input_image`, `input_file`, `input_audio`...: this model reads text only (a 400)."""

    model_config = ConfigDict(extra="allow")
    type: Annotated[str, StringConstraints(max_length=64)]


def _part_tag(value: Any) -> str:
    return _tag(value, ("input_text", "output_text"))


def _parts(input_text: Any, output_text: Any) -> Any:
    """A message's parts, built from the (bounded) text part models."""
    part = Annotated[
        Annotated[input_text, Tag("input_text")]
        | Annotated[output_text, Tag("output_text")]
        | Annotated[UnsupportedPart, Tag("unsupported")],
        Discriminator(_part_tag),
    ]
    return Annotated[list[part], Field(min_length=1, max_length=MAX_PARTS)]  # type: ignore[valid-type]


Parts = _parts(InputText, OutputText)


def _text(content: str | Sequence[BaseModel], param: str) -> str:
    """A message's (or a call output's) text: its parts joined; anything but text is a 400."""
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if isinstance(part, UnsupportedPart):
            message = f"content of type {part.type!r} is not supported: this model reads text only"
            raise Unsupported(message, f"{param}.{index}.type")
        texts.append(part.text)  # type: ignore[attr-defined]
    return "".join(texts)


class MessageItem(StrictModel):
    """A turn: a string, or parts (`input_text`, or an earlier answer's `output_text`)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | Parts
    id: Identifier | None = None
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    def to_chat_message(self, param: str) -> ChatMessage:
        return ChatMessage(role=self.role, content=_text(self.content, param))


class FunctionCallItem(StrictModel):
    """A call an earlier answer made (as this API returned it)."""

    type: Literal["function_call"]
    call_id: Identifier
    name: FunctionName
    arguments: str = Field(description="The arguments as JSON text of an object.")
    id: Identifier | None = None
    status: ItemStatus | None = None

    def to_chat_message(self, param: str) -> ChatMessage:
        return ChatMessage(
            role="assistant", content="", tool_calls=(ToolCall(self.call_id, self.name, self.arguments),)
        )


class FunctionCallOutputItem(StrictModel):
    """What the client's function returned for call `call_id`."""

    type: Literal["function_call_output"]
    call_id: Identifier
    output: str | Parts
    id: Identifier | None = None
    status: ItemStatus | None = None

    def to_chat_message(self, param: str) -> ChatMessage:
        return ChatMessage(role="tool", content=_text(self.output, param), tool_call_id=self.call_id)


class UnsupportedItem(BaseModel):
    """`item_reference`, `reasoning`, hosted tools' calls...: a 400 naming the type."""

    model_config = ConfigDict(extra="allow")
    type: Annotated[str, StringConstraints(max_length=64)]


def _item_tag(value: Any) -> str:
    return _tag(value, ("message", "function_call", "function_call_output"), default="message")


def _input_item(message: Any, call: Any, output: Any) -> Any:
    """An input item's type, built from the (bounded) message, call and call output models."""
    return Annotated[
        Annotated[message, Tag("message")]
        | Annotated[call, Tag("function_call")]
        | Annotated[output, Tag("function_call_output")]
        | Annotated[UnsupportedItem, Tag("unsupported")],
        Discriminator(_item_tag),
    ]


InputItem = _input_item(MessageItem, FunctionCallItem, FunctionCallOutputItem)


class FunctionToolParam(StrictModel):
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="A JSON Schema of the arguments (an object); the calls made always validate against it."
    )
    strict: bool | None = Field(None, description="Accepted for OpenAI clients: arguments always follow the schema.")

    def to_tool(self) -> FunctionTool:
        if self.parameters is None:
            return FunctionTool(self.name, self.description)
        return FunctionTool(self.name, self.description, self.parameters)


class UnsupportedTool(BaseModel):
    """OpenAI's hosted tools (web_search, file_search, computer use, code_interpreter, mcp...): a 400."""

    model_config = ConfigDict(extra="allow")
    type: Annotated[str, StringConstraints(max_length=64)]


def _tool_tag(value: Any) -> str:
    return _tag(value, ("function",))


ToolParam = Annotated[
    Annotated[FunctionToolParam, Tag("function")] | Annotated[UnsupportedTool, Tag("unsupported")],
    Discriminator(_tool_tag),
]


class ToolChoiceFunction(StrictModel):
    """Call this function (once)."""

    type: Literal["function"]
    name: FunctionName


class JsonSchemaTextFormat(JsonSchemaSpec):
    """JSON valid against a JSON Schema (the SDK's `responses.parse(text_format=Model)` sends it)."""

    model_config = ConfigDict(serialize_by_alias=True)
    type: Literal["json_schema"]


TextFormatParam = Annotated[TextFormat | JsonObjectFormat | JsonSchemaTextFormat, Field(discriminator="type")]


class TextConfig(StrictModel):
    format: TextFormatParam = Field(
        default_factory=lambda: TextFormat(type="text"),
        description="`json_object` or `json_schema`: an answer that completes is JSON (valid against the schema); "
        "only a max_output_tokens cut leaves it unfinished. Needs ENGINE=llamacpp.",
    )


class ReasoningParam(StrictModel):
    """Accepted for OpenAI clients, but this model does not reason: only null (or effort `none`) is served."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseRequest(StrictModel):
    """OpenAI `POST /v1/responses`; `response_request_model` bounds its texts and tokens from the settings."""

    model: Annotated[str, StringConstraints(max_length=256)] | None = None
    input: str | Annotated[list[InputItem], Field(min_length=1, max_length=MAX_MESSAGES)] = Field(
        description="A user message, or items: messages, and function calls with their outputs."
    )
    instructions: str | None = Field(None, description="A system message before the input (not carried over).")
    max_output_tokens: int | None = Field(None, description="Default: MAX_NEW_TOKENS_LIMIT.")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description=f"Default 1; below {GREEDY_BELOW_TEMPERATURE} (0 included): greedy decoding."
    )
    top_p: TopP | None = None
    tools: Annotated[list[ToolParam], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="Function tools (ENGINE=llamacpp); calls come back as function_call items. Others: 400."
    )
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = Field(
        None,
        description="`auto` (the default): text or calls; `required`: at least one call; a named function: exactly "
        "that call; `none`: text, the tools not offered.",
    )
    parallel_tool_calls: bool | None = Field(None, description="May an answer hold several calls (default true).")
    text: TextConfig | None = None
    metadata: Metadata | None = Field(None, description="Up to 16 keys (64 characters) and values (512), echoed.")
    user: Annotated[str, StringConstraints(max_length=256)] | None = None
    stream: bool | None = Field(False, description="Server-Sent Events, named by type, as the answer is generated.")
    store: bool | None = Field(
        True, description="Keep the response on this instance (RESPONSE_STORE_SIZE), for previous_response_id."
    )
    previous_response_id: Identifier | None = Field(
        None,
        description="Continue a stored response's conversation (its input and output before this input). Stored on "
        "one instance only: without a shared store, send the whole conversation in `input` instead.",
    )
    reasoning: ReasoningParam | None = Field(None, description="This model does not reason: null only.")
    truncation: Literal["auto", "disabled"] | None = Field(
        None, description="`disabled` only: a conversation longer than the context is a 400, never cut."
    )

    def check_supported(self) -> None:
        """What OpenAI's API has and this server cannot serve: a 400 naming it."""
        reasoning = self.reasoning
        if reasoning is not None and (
            reasoning.effort not in (None, "none") or reasoning.summary or reasoning.generate_summary
        ):
            raise Unsupported("this model does not reason: send reasoning null (or leave it out)", "reasoning")
        if self.truncation == "auto":
            raise Unsupported(
                "truncation `auto` is not supported: a conversation must fit the model's context (send "
                "`disabled`, or fewer items)",
                "truncation",
            )
        for index, tool in enumerate(self.tools or ()):
            if isinstance(tool, UnsupportedTool):
                raise Unsupported(
                    f"tools of type {tool.type!r} are not supported: this server runs function tools only",
                    f"tools.{index}.type",
                )

    @cached_property
    def offered_tools(self) -> tuple[FunctionTool, ...]:
        """The tools the model is told of and may call: none when tool_choice is `none`. Built once."""
        if self.tool_choice == "none":
            return ()
        return tuple(tool.to_tool() for tool in self.tools or () if isinstance(tool, FunctionToolParam))

    def conversation(self, history: Sequence[ChatMessage] = ()) -> tuple[ChatMessage, ...]:
        """The turns so far: `history` (a stored conversation), then this request's input (instructions apart)."""
        if isinstance(self.input, str):
            return (*history, ChatMessage(role="user", content=self.input))
        messages = list(history)
        for index, item in enumerate(self.input):
            if isinstance(item, UnsupportedItem):
                raise Unsupported(f"input items of type {item.type!r} are not supported here", f"input.{index}.type")
            append_turn(messages, item.to_chat_message(f"input.{index}.content"))
        return tuple(messages)

    def answer_grammar(self) -> Grammar | None:
        """What the answer must match: a call of the offered tools (or text, with `auto`), else text.format's JSON."""
        tools, text_format = self.offered_tools, self.text.format if self.text else None
        response_format = None
        if isinstance(text_format, JsonObjectFormat):
            response_format = Grammar.json_object(param="text.format")
        elif isinstance(text_format, JsonSchemaTextFormat):
            response_format = Grammar.json_schema(text_format.schema_, param="text.format")
        if not tools:
            if self.tool_choice not in (None, "auto", "none"):
                raise InvalidTools("tool_choice asks for a call, but there are no function tools", "tool_choice")
            return response_format
        if response_format is not None:
            raise Unsupported("text.format json_object/json_schema cannot be combined with tools here", "text.format")
        choice = self.tool_choice or "auto"
        name = choice if isinstance(choice, str) else choice.name
        grammar = tool_grammar(tools, name, parallel=self.parallel_tool_calls is not False)
        return None if grammar is None else Grammar("lark", grammar, param="tools")

    def sampling(self) -> SamplingParams:
        temperature = 1.0 if self.temperature is None else self.temperature
        if temperature < GREEDY_BELOW_TEMPERATURE:
            return GREEDY
        return SamplingParams(do_sample=True, temperature=temperature, top_p=1.0 if self.top_p is None else self.top_p)

    def to_generation_request(
        self,
        template: ChatTemplate,
        conversation: Sequence[ChatMessage],
        *,
        default_max_tokens: int,
        deadline: float | None,
    ) -> GenerationRequest:
        """This API's one translation into the core's request: `conversation` (from `conversation()`) after the
        instructions, rendered with the model's chat template."""
        self.check_supported()
        instructions = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        return GenerationRequest(
            prompt=template.render([*instructions, *conversation], self.offered_tools),
            max_new_tokens=self.max_output_tokens or default_max_tokens,
            sampling=self.sampling(),
            deadline=deadline,
            add_special_tokens=False,  # the template wrote them
            grammar=self.answer_grammar(),
            model=self.model,
        )

    def echo(self, *, stored: bool) -> dict[str, Any]:
        """The request's settings, as OpenAI's response object repeats them."""
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "tools": [tool for tool in self.tools or () if isinstance(tool, FunctionToolParam)],
            "tool_choice": self.tool_choice or "auto",
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "text": self.text or TextConfig(),
            "metadata": self.metadata or {},
            "previous_response_id": self.previous_response_id,
            "store": stored,
            "user": self.user,
        }


def append_turn(messages: list[ChatMessage], message: ChatMessage) -> None:
    """Add `message` to a conversation: a call joins the assistant turn just before it, as chat's tool_calls do."""
    last = messages[-1] if messages else None
    joins = message.role == "assistant" and message.tool_calls and not message.content
    if joins and last is not None and last.role == "assistant":
        messages[-1] = replace(last, tool_calls=(*last.tool_calls, *message.tool_calls))
    else:
        messages.append(message)


def response_request_model(bounds: Bounds) -> type[ResponseRequest]:
    """`ResponseRequest` with the settings' limits on every text (a prompt's length) and on max_output_tokens."""
    text = bounds.prompt

    def bounded(model: type[BaseModel], name: str, annotation: Any) -> Any:
        return create_model(model.__name__, __base__=model, __module__=__name__, **{name: (annotation, ...)})

    content = text | _parts(bounded(InputText, "text", text), bounded(OutputText, "text", text))
    item = _input_item(
        bounded(MessageItem, "content", content),
        bounded(FunctionCallItem, "arguments", text),
        bounded(FunctionCallOutputItem, "output", content),
    )
    items = Annotated[list[item], Field(min_length=1, max_length=MAX_MESSAGES)]  # type: ignore[valid-type]
    return create_model(
        "ResponseRequest",
        __base__=ResponseRequest,
        __module__=__name__,
        input=(text | items, Field(description=ResponseRequest.model_fields["input"].description)),
        instructions=(text | None, Field(None, description=ResponseRequest.model_fields["instructions"].description)),
        max_output_tokens=(bounds.max_new_tokens | None, Field(None, description="Default: MAX_NEW_TOKENS_LIMIT.")),
    )


# ---- the response ----


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str = Field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputTextPart]


class OutputFunctionCall(BaseModel):
    id: str = Field(default_factory=lambda: f"fc_{uuid.uuid4().hex}")
    type: Literal["function_call"] = "function_call"
    status: ItemStatus
    call_id: str
    name: str
    arguments: str


OutputItem = Annotated[OutputMessage | OutputFunctionCall, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="Input tokens read from the prefix cache rather than computed.")
    cache_write_tokens: int = Field(0, description="OpenAI's explicit cache writes: none here.")


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = Field(0, description="This model does not reason: always 0.")


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int, cached_tokens: int) -> ResponseUsage:
        return cls(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "schema_violation"] = Field(
        "max_output_tokens",
        description="`schema_violation`: the answer is complete JSON but fails a keyword of `text.format`'s schema "
        "that decoding cannot enforce (uniqueItems, not, ...): never reported as completed.",
    )
    time_limit_reached: bool = Field(
        False, description="Cut by the request's time budget rather than max_output_tokens (OpenAI has no reason)."
    )


class ReasoningOut(BaseModel):
    effort: None = None
    summary: None = None


class ResponseObject(BaseModel):
    """OpenAI's response object: every field its SDK requires, so `response.output_text` works."""

    model_config = ConfigDict(serialize_by_alias=True)
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    completed_at: int | None = None
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None = None
    instructions: str | None
    max_output_tokens: int | None
    temperature: float
    top_p: float
    tools: list[FunctionToolParam]
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction
    parallel_tool_calls: bool
    text: TextConfig
    metadata: dict[str, str]
    previous_response_id: str | None
    store: bool
    user: str | None
    reasoning: ReasoningOut = Field(default_factory=ReasoningOut)
    truncation: Literal["disabled"] = "disabled"


FinishReason = str | None


def is_cut(finish_reason: FinishReason) -> bool:
    """Whether the answer is incomplete: cut short, or complete JSON that fails its schema's check."""
    return finish_reason in ("length", "time_limit", "schema_violation")


@dataclass(frozen=True)
class ResponseDraft:
    """One response as it is made: its id and time, and the request's settings it repeats."""

    model: str
    echo: dict[str, Any]
    id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self, output: list[Any], *, finish_reason: FinishReason = None, usage: ResponseUsage | None = None
    ) -> ResponseObject:
        """The response with `output`: in progress until there is a finish reason, then completed or incomplete."""
        status: Literal["in_progress", "completed", "incomplete"] = "in_progress"
        incomplete = None
        if finish_reason is not None:
            status = "incomplete" if is_cut(finish_reason) else "completed"
        if status == "incomplete":
            reason = "schema_violation" if finish_reason == "schema_violation" else "max_output_tokens"
            incomplete = IncompleteDetails(reason=reason, time_limit_reached=finish_reason == "time_limit")
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            incomplete_details=incomplete,
            model=self.model,
            output=output,
            usage=usage,
            **self.echo,
        )

    def answer(self, result: GenerationResult, tools: Sequence[FunctionTool]) -> ResponseObject:
        """The finished response: the one completion's output items, its status and usage."""
        (completion,) = result.completions
        usage = ResponseUsage.of(result.prompt_tokens, result.completion_tokens, result.timings.cached_tokens)
        return self.response(output_items(completion, tools), finish_reason=completion.finish_reason, usage=usage)


def _status(finish_reason: FinishReason) -> ItemStatus:
    return "incomplete" if is_cut(finish_reason) else "completed"


def output_items(completion: Completion, tools: Sequence[FunctionTool]) -> list[OutputMessage | OutputFunctionCall]:
    """A finished answer as output items: its text as a message, then the calls it made (read out of its text)."""
    content, calls = parse_tool_calls(completion.text, tools) if tools else (completion.text, [])
    status = _status(completion.finish_reason)
    items: list[OutputMessage | OutputFunctionCall] = []
    if content or not calls:
        items.append(OutputMessage(status=status, content=[OutputTextPart(text=content or "")]))
    items += [OutputFunctionCall(status="completed", call_id=c.id, name=c.name, arguments=c.arguments) for c in calls]
    return items


def output_turns(output: Iterable[OutputMessage | OutputFunctionCall]) -> list[ChatMessage]:
    """A response's output as the conversation's turns, for a later `previous_response_id`."""
    turns: list[ChatMessage] = []
    for item in output:
        if isinstance(item, OutputMessage):
            append_turn(turns, ChatMessage(role="assistant", content="".join(p.text for p in item.content)))
        else:
            call = ToolCall(item.call_id, item.name, item.arguments)
            append_turn(turns, ChatMessage(role="assistant", content="", tool_calls=(call,)))
    return turns


# ---- the stream ----


class ResponseStateEvent(NamedEvent):
    type: Literal["response.created", "response.in_progress", "response.completed", "response.incomplete"]
    sequence_number: int
    response: ResponseObject


class OutputItemEvent(NamedEvent):
    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int
    output_index: int
    item: OutputItem


class _ItemEvent(NamedEvent):
    """An event about one output item: what every item-level event carries."""

    sequence_number: int
    item_id: str
    output_index: int


class _ContentEvent(_ItemEvent):
    content_index: int = 0


class ContentPartEvent(_ContentEvent):
    type: Literal["response.content_part.added", "response.content_part.done"]
    part: OutputTextPart


class TextDeltaEvent(_ContentEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(_ContentEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ArgumentsDeltaEvent(_ItemEvent):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    delta: str


class ArgumentsDoneEvent(_ItemEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    arguments: str


class ErrorEvent(NamedEvent):
    """A stream that failed after it began (its status was 200)."""

    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None
    message: str
    param: str | None = None


StreamEvent = (
    ResponseStateEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | ArgumentsDeltaEvent
    | ArgumentsDoneEvent
    | ErrorEvent
)


class ResponseStreamEvent(RootModel[Annotated[StreamEvent, Field(discriminator="type")]]):
    """Any event of a streamed response; the SSE `event:` field is its `type`."""


class ResponseEvents:
    """A streamed response's events, OpenAI's: created, in_progress, then each output item added, its text or
    arguments as deltas and done, then completed (or incomplete). Every event has the next sequence_number."""

    def __init__(
        self, draft: ResponseDraft, tools: Sequence[FunctionTool], on_done: Callable[[ResponseObject], None]
    ) -> None:
        self._draft = draft
        self._reader = ToolCallStream(tools) if tools else None
        self._on_done = on_done
        self._sequence = 0
        self._output: list[OutputMessage | OutputFunctionCall] = []  # the items done
        self._open: OutputMessage | OutputFunctionCall | None = None  # the item being written, as it was added
        self._written = ""  # its text or arguments so far

    def _event(self, kind: type[NamedEvent], **fields: Any) -> NamedEvent:
        event = kind(sequence_number=self._sequence, **fields)
        self._sequence += 1
        return event

    def delta(self, delta: Delta, tally: StreamTally) -> list[NamedEvent]:
        events: list[NamedEvent] = []
        if self._sequence == 0:
            for kind in ("response.created", "response.in_progress"):
                events.append(self._event(ResponseStateEvent, type=kind, response=self._draft.response([])))
        if self._reader is None:
            events += self._text(delta.text, always=True)
            return events
        pieces = self._reader.feed(delta.text) + (self._reader.finish() if delta.finish_reason else [])
        for piece in pieces:
            if piece.index is None:
                events += self._text(piece.content)
            elif piece.id is not None:
                events += self._close("completed")
                events += self._add(
                    OutputFunctionCall(status="in_progress", call_id=piece.id, name=piece.name or "", arguments="")
                )
                events += self._arguments(piece.arguments)
            else:
                events += self._arguments(piece.arguments)
        return events

    def end(self, tally: StreamTally) -> list[NamedEvent]:
        finish_reason = tally.finish_reasons.get(0, "stop")
        events = self._close(_status(finish_reason))
        if not self._output:  # an empty answer: an empty message, as the whole response has
            events += self._text("", always=True) + self._close(_status(finish_reason))
        usage = tally.usage
        response = self._draft.response(
            list(self._output),
            finish_reason=finish_reason,
            usage=ResponseUsage.of(usage.prompt_tokens, usage.completion_tokens, tally.cached_tokens),
        )
        self._on_done(response)
        kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
        return [*events, self._event(ResponseStateEvent, type=kind, response=response)]

    def error(self, error: ErrorResponse) -> list[NamedEvent]:
        body = error.error
        return [self._event(ErrorEvent, code=body.code, message=body.message, param=body.param)]

    def _index(self) -> int:
        return len(self._output)

    def _add(self, item: OutputMessage | OutputFunctionCall) -> list[NamedEvent]:
        self._open, self._written = item, ""
        events = [
            self._event(OutputItemEvent, type="response.output_item.added", output_index=self._index(), item=item)
        ]
        if isinstance(item, OutputMessage):
            events.append(self._part_event("response.content_part.added", ""))
        return events

    def _part_event(self, kind: str, text: str) -> NamedEvent:
        assert self._open is not None
        return self._event(
            ContentPartEvent,
            type=kind,
            item_id=self._open.id,
            output_index=self._index(),
            part=OutputTextPart(text=text),
        )

    def _text(self, text: str, *, always: bool = False) -> list[NamedEvent]:
        """`text` as the message's next delta (a message added first if none is open; `always`: even for "")."""
        events: list[NamedEvent] = []
        if not (text or always):
            return events
        if not isinstance(self._open, OutputMessage):
            events += self._close("completed") + self._add(OutputMessage(status="in_progress", content=[]))
        if text:
            self._written += text
            events.append(self._event(TextDeltaEvent, item_id=self._open_id(), output_index=self._index(), delta=text))
        return events

    def _arguments(self, fragment: str) -> list[NamedEvent]:
        if not fragment:
            return []
        self._written += fragment
        return [self._event(ArgumentsDeltaEvent, item_id=self._open_id(), output_index=self._index(), delta=fragment)]

    def _open_id(self) -> str:
        assert self._open is not None
        return self._open.id

    def _close(self, status: ItemStatus) -> list[NamedEvent]:
        """The open item's done events, and the item done into the output."""
        item, written, index = self._open, self._written, self._index()
        if item is None:
            return []
        events: list[NamedEvent] = []
        if isinstance(item, OutputMessage):
            done: OutputMessage | OutputFunctionCall = item.model_copy(
                update={"status": status, "content": [OutputTextPart(text=written)]}
            )
            events.append(self._event(TextDoneEvent, item_id=item.id, output_index=index, text=written))
            events.append(self._part_event("response.content_part.done", written))
        else:
            done = item.model_copy(update={"status": status, "arguments": written})
            events.append(self._event(ArgumentsDoneEvent, item_id=item.id, output_index=index, arguments=written))
        events.append(self._event(OutputItemEvent, type="response.output_item.done", output_index=index, item=done))
        self._output.append(done)
        self._open, self._written = None, ""
        return events


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
