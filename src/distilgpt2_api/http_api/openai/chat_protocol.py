"""OpenAI's chat completions shapes, the subset this service implements.

`ChatCompletionRequest.to_generation_request` is the one translation point of the chat API: it renders
the conversation with the model's own chat template.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from distilgpt2_api.core.chat import ChatMessage, ChatTemplate, Role
from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.core.sequence import Delta, GeneratedToken
from distilgpt2_api.core.stream import Completion
from distilgpt2_api.http_api.openai.protocol import Choice, OpenAIEvents, OpenAIRequest, Response
from distilgpt2_api.http_api.protocol import Bounds, StrictModel, TopLogprobs, Usage

if TYPE_CHECKING:
    pass

MAX_MESSAGES = 256


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class Message(StrictModel):
    role: Role
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(OpenAIRequest):
    """OpenAI `POST /v1/chat/completions`; `chat_request_model` bounds the conversation from the settings."""

    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: int | None = Field(None, description="Deprecated by OpenAI for max_completion_tokens; either works.")
    max_completion_tokens: int | None = None
    logprobs: bool = Field(False, description="Each answer token's log-probability.")
    top_logprobs: TopLogprobs | None = Field(
        None, description="With logprobs: also this many likeliest alternatives per token."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("send max_completion_tokens or max_tokens, not both")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def max_new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def to_generation_request(
        self, template: ChatTemplate, *, default_max_tokens: int, deadline: float | None
    ) -> GenerationRequest:
        return GenerationRequest(
            prompt=chat_prompt(template, self.messages),
            max_new_tokens=self.max_new_tokens(default_max_tokens),
            n=self.n,
            sampling=self.sampling(),
            stop=self.stop_strings(),
            deadline=deadline,
            add_special_tokens=False,  # the template wrote them
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            grammar=self.grammar(),
        )


def chat_prompt(template: ChatTemplate, messages: list[Message]) -> str:
    """The conversation as the model sees it: rendered with its chat template (special tokens included)."""
    return template.render([ChatMessage(role=m.role, content=m.text()) for m in messages])


def message_model(bounds: Bounds) -> type[Message]:
    """`Message` with the settings' limit on its text."""
    return create_model(
        "Message",
        __base__=Message,
        __module__=__name__,
        content=(bounds.prompt | Annotated[list[TextPart], Field(min_length=1)], ...),
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


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


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
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None

    @classmethod
    def of(cls, completion: Completion, index: int, *, logprobs: bool) -> ChatChoice:
        return cls(
            index=index,
            message=ChatMessageOut(content=completion.text),
            logprobs=ChatLogprobs.of(completion.tokens) if logprobs else None,
            **cls.ending(completion.finish_reason),
        )


class ChatCompletionResponse(Response):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    time_limit_reached: bool = False


class ChatCompletionChunk(BaseModel):
    """One event of a streamed chat answer: what each choice's message gained; its finish_reason at its end."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ChatEvents(OpenAIEvents):
    """A streamed chat answer's events: each choice's role first, then its content as it comes."""

    chunk = ChatCompletionChunk
    id_prefix = "chatcmpl"

    def __init__(self, model: str, body: ChatCompletionRequest) -> None:
        super().__init__(model, body)
        self._logprobs = body.logprobs
        self._started: set[int] = set()

    def delta(self, delta: Delta) -> list[BaseModel]:
        first = delta.index not in self._started
        if not (first or delta.text or delta.finish_reason):
            return []  # nothing a client could see (a special token, an unfinished character)
        self._started.add(delta.index)
        choice = ChatChunkChoice(
            index=delta.index,
            delta=ChatDelta(role="assistant" if first else None, content=delta.text),
            logprobs=ChatLogprobs.of(delta.tokens) if self._logprobs else None,
            **Choice.ending(delta.finish_reason),
        )
        return [ChatCompletionChunk(**self._chunk, choices=[choice])]
