"""OpenAI's chat completions shapes, the subset this service implements.

`ChatCompletionRequest.to_generation_request` is the one translation point of the chat API: it renders
the conversation with the model's own chat template.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from distilgpt2_api.core.chat import ChatMessage, ChatTemplate, Role
from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.core.scheduler import Completion
from distilgpt2_api.http_api.openai.protocol import Choice, OpenAIRequest, Response
from distilgpt2_api.http_api.protocol import Bounds, StrictModel

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
    logprobs: bool = Field(False, description="Not supported yet: true is rejected.")

    @model_validator(mode="after")
    def _one_token_limit(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("send max_completion_tokens or max_tokens, not both")
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


class ChatChoice(Choice):
    message: ChatMessageOut

    @classmethod
    def of(cls, completion: Completion, index: int) -> ChatChoice:
        return cls(index=index, message=ChatMessageOut(content=completion.text), **cls.ending(completion))


class ChatCompletionResponse(Response):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
