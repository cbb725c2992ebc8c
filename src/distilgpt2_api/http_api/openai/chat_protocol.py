"""OpenAI's chat completions shapes, the subset this service implements.

`ChatCompletionRequest.to_generation_request` is the one translation point of the chat API: it renders
the conversation with the model's own chat template, and turns `response_format` or `tools` into the grammar
the answer must follow. `ChatChoice.of` and `ChatEvents` read tool calls back out of the answer's text.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, create_model, field_validator, model_validator

from distilgpt2_api.core.chat import ChatMessage, ChatTemplate, Role
from distilgpt2_api.core.errors import InvalidRequest
from distilgpt2_api.core.grammar import Grammar
from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.core.sequence import Delta, GeneratedToken
from distilgpt2_api.core.stream import Completion
from distilgpt2_api.core.tools import FunctionTool, ToolCall, ToolCallStream, parse_tool_calls, tool_grammar
from distilgpt2_api.http_api.openai.protocol import Choice, Chunk, OpenAIEvents, OpenAIRequest, Response
from distilgpt2_api.http_api.protocol import Bounds, StrictModel, TopLogprobs

if TYPE_CHECKING:
    from distilgpt2_api.http_api.streaming import StreamTally

MAX_MESSAGES = 256
MAX_TOOLS = 64
FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class FunctionCall(StrictModel):
    name: str
    arguments: str = Field(description="The arguments as JSON text, as the model wrote them.")


class MessageToolCall(StrictModel):
    """A call an earlier assistant turn made (as this API returned it)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(StrictModel):
    role: Role
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = Field(None, description="An assistant turn's calls.")
    tool_call_id: str | None = Field(None, description="A `tool` turn: the id of the call it answers.")
    content: str | Annotated[list[TextPart], Field(min_length=1)] | None = Field(
        None, validate_default=True, description="Required, except for an assistant turn with tool_calls."
    )

    @field_validator("content")
    @classmethod
    def _content_unless_calls(cls, content: object, info: ValidationInfo) -> object:
        if content is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise ValueError("content is required (it may be null only in an assistant turn with tool_calls)")
        return content

    @model_validator(mode="after")
    def _tool_turns(self) -> Message:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages have tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)

    def to_chat_message(self) -> ChatMessage:
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        return ChatMessage(role=self.role, content=self.text(), tool_calls=calls, tool_call_id=self.tool_call_id)


class FunctionDefinition(StrictModel):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="A JSON Schema of the arguments (an object); the calls made always validate against it."
    )
    strict: bool | None = Field(None, description="Accepted for OpenAI clients: arguments always follow the schema.")


class ToolDefinition(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition

    def to_tool(self) -> FunctionTool:
        function = self.function
        if function.parameters is None:
            return FunctionTool(function.name, function.description)
        return FunctionTool(function.name, function.description, function.parameters)


class FunctionChoice(StrictModel):
    name: FunctionName


class NamedToolChoice(StrictModel):
    """Call this function (once)."""

    type: Literal["function"]
    function: FunctionChoice


class ChatCompletionRequest(OpenAIRequest):
    """OpenAI `POST /v1/chat/completions`; `chat_request_model` bounds the conversation from the settings."""

    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: int | None = Field(None, description="Deprecated by OpenAI for max_completion_tokens; either works.")
    max_completion_tokens: int | None = None
    logprobs: bool = Field(False, description="Each answer token's log-probability.")
    top_logprobs: TopLogprobs | None = Field(
        None, description="With logprobs: also this many likeliest alternatives per token."
    )
    tools: Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="Functions the model may call (ENGINE=llamacpp); calls come back in message.tool_calls."
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description="`auto` (the default with tools): text or calls; `required`: at least one call; a named "
        "function: exactly that call; `none`: text, the tools not offered.",
    )
    parallel_tool_calls: bool = Field(True, description="With `auto`/`required`: may the answer hold several calls.")

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("send max_completion_tokens or max_tokens, not both")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        return self

    @cached_property
    def offered_tools(self) -> tuple[FunctionTool, ...]:
        """The tools the model is told of and may call: none when tool_choice is `none`. Built once."""
        if not self.tools or self.tool_choice == "none":
            return ()
        return tuple(tool.to_tool() for tool in self.tools)

    def answer_grammar(self) -> Grammar | None:
        """What every answer must match: a call of the offered tools (or text, with `auto`), else
        response_format's JSON, else nothing."""
        tools, response_format = self.offered_tools, self.grammar()
        if not tools:
            return response_format
        if response_format is not None:
            raise InvalidRequest("response_format json_object/json_schema cannot be combined with tools here")
        choice = self.tool_choice or "auto"
        name = choice if isinstance(choice, str) else choice.function.name
        text = tool_grammar(tools, name, parallel=self.parallel_tool_calls)
        return None if text is None else Grammar("lark", text, param="tools")

    def max_new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def to_generation_request(
        self, template: ChatTemplate, *, default_max_tokens: int, deadline: float | None
    ) -> GenerationRequest:
        """This API's one translation into the core's request."""
        return GenerationRequest(
            prompt=chat_prompt(template, self.messages, self.offered_tools),
            max_new_tokens=self.max_new_tokens(default_max_tokens),
            n=self.n,
            sampling=self.sampling(),
            stop=self.stop_strings(),
            deadline=deadline,
            add_special_tokens=False,  # the template wrote them
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            grammar=self.answer_grammar(),
            model=self.model,
            rules=self.token_rules(),
        )


def chat_prompt(template: ChatTemplate, messages: list[Message], tools: Sequence[FunctionTool] = ()) -> str:
    """The conversation as the model sees it: rendered with its chat template (special tokens included)."""
    return template.render([m.to_chat_message() for m in messages], tools)


def message_model(bounds: Bounds) -> type[Message]:
    """`Message` with the settings' limit on its text."""
    return create_model(
        "Message",
        __base__=Message,
        __module__=__name__,
        content=(
            bounds.prompt | Annotated[list[TextPart], Field(min_length=1)] | None,
            Field(None, validate_default=True),
        ),
    )


def chat_request_model(bounds: Bounds) -> type[ChatCompletionRequest]:
    """`ChatCompletionRequest` with the settings' limits on message length, token counts and n."""
    bounded_message = message_model(bounds)
    return create_model(
        "ChatCompletionRequest",
        __base__=ChatCompletionRequest,
        __module__=__name__,
        messages=(Annotated[list[bounded_message], Field(min_length=1, max_length=MAX_MESSAGES)], ...),  # type: ignore[valid-type]
        max_tokens=(bounds.max_new_tokens | None, None),
        max_completion_tokens=(bounds.max_new_tokens | None, None),
        n=(bounds.sequences, 1),
    )


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None

    @classmethod
    def of(cls, text: str, tools: Sequence[FunctionTool]) -> ChatMessageOut:
        """The answer; with tools, the calls it made read out of its text."""
        if not tools:
            return cls(content=text)
        content, calls = parse_tool_calls(text, tools)
        if not calls:
            return cls(content=text)
        out = [ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]
        return cls(content=content, tool_calls=out)


ChatFinishReason = Literal["stop", "length", "tool_calls", "schema_violation"]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None

    @classmethod
    def of(cls, token: str, logprob: float) -> TopLogprob:
        return cls(token=token, logprob=logprob, bytes=list(token.encode("utf-8", errors="replace")))


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None

    @classmethod
    def of(cls, tokens: tuple[GeneratedToken, ...]) -> ChatLogprobs:
        return cls(
            content=[
                TokenLogprob(
                    **TopLogprob.of(token.token, token.logprob or 0.0).model_dump(),
                    top_logprobs=[TopLogprob.of(alt.token, alt.logprob) for alt in token.top_logprobs],
                )
                for token in tokens
            ]
        )


class ChatChoice(Choice):
    finish_reason: ChatFinishReason  # type: ignore[assignment]
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None

    @classmethod
    def of(
        cls, completion: Completion, index: int, *, logprobs: bool, tools: Sequence[FunctionTool] = ()
    ) -> ChatChoice:
        message = ChatMessageOut.of(completion.text, tools)
        ending = cls.ending(completion.finish_reason)
        if message.tool_calls and ending["finish_reason"] == "stop":
            ending["finish_reason"] = "tool_calls"
        return cls(
            index=index,
            message=message,
            logprobs=ChatLogprobs.of(completion.tokens) if logprobs else None,
            **ending,
        )


class ChatCompletionResponse(Response):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str


class ToolCallDeltaOut(BaseModel):
    """A piece of call `index`: its first has the id and name, the later ones fragments of its arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDeltaOut] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: ChatFinishReason | None = None
    time_limit_reached: bool = False


class ChatCompletionChunk(Chunk):
    """One event of a streamed chat answer: what each choice's message gained; its finish_reason at its end."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class ChatEvents(OpenAIEvents):
    """A streamed chat answer's events: each choice's role first, then its content as it comes."""

    chunk = ChatCompletionChunk
    id_prefix = "chatcmpl"

    def __init__(self, model: str, body: ChatCompletionRequest) -> None:
        super().__init__(model, body)
        self._logprobs = body.logprobs
        self._tools = body.offered_tools
        self._started: set[int] = set()
        self._calls: dict[int, ToolCallStream] = {}  # per choice, with tools: its text read as it streams
        self._called: set[int] = set()  # choices that made a call

    def delta(self, delta: Delta, tally: StreamTally) -> list[BaseModel]:
        first = delta.index not in self._started
        if not (first or delta.text or delta.finish_reason):
            return []  # nothing a client could see (a special token, an unfinished character)
        self._started.add(delta.index)
        logprobs = ChatLogprobs.of(delta.tokens) if self._logprobs else None
        if not self._tools:
            choice = ChatChunkChoice(
                index=delta.index,
                delta=ChatDelta(role="assistant" if first else None, content=delta.text),
                logprobs=logprobs,
                **Choice.ending(delta.finish_reason),
            )
            return [ChatCompletionChunk(**self._chunk, choices=[choice])]
        return self._tool_chunks(delta, first, logprobs)

    def _tool_chunks(self, delta: Delta, first: bool, logprobs: ChatLogprobs | None) -> list[BaseModel]:
        """With tools: content as text, calls as OpenAI streams them (the finish_reason `tool_calls` if any)."""
        reader = self._calls.setdefault(delta.index, ToolCallStream(self._tools))
        pieces = reader.feed(delta.text) + (reader.finish() if delta.finish_reason else [])
        deltas = [ChatDelta(role="assistant")] if first else []
        for piece in pieces:
            if piece.index is None:
                deltas.append(ChatDelta(content=piece.content))
                continue
            self._called.add(delta.index)
            function = FunctionCallDelta(name=piece.name, arguments=piece.arguments)
            call = ToolCallDeltaOut(
                index=piece.index, id=piece.id, type="function" if piece.id else None, function=function
            )
            deltas.append(ChatDelta(tool_calls=[call]))
        ending = Choice.ending(delta.finish_reason)
        if ending["finish_reason"] == "stop" and delta.index in self._called:
            ending["finish_reason"] = "tool_calls"
        if ending["finish_reason"] is not None or (not deltas and logprobs is not None):
            deltas.append(ChatDelta())  # carries the finish_reason, or tokens' logprobs whose text is held back
        chunks: list[BaseModel] = []
        for i, chat_delta in enumerate(deltas):
            last = i == len(deltas) - 1
            choice = ChatChunkChoice(
                index=delta.index,
                delta=chat_delta,
                logprobs=logprobs if last else None,
                **(ending if last else {}),
            )
            chunks.append(ChatCompletionChunk(**self._chunk, choices=[choice]))
        return chunks
