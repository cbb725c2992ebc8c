"""OpenAI's chat completions shapes, the subset this service implements.

`ChatCompletionRequest.to_generation_request` is the one translation point of the chat API: it renders
the conversation with the model's own chat template.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from distilgpt2_api.core.chat import ChatMessage, ChatTemplate, Role
from distilgpt2_api.core.request import GREEDY, GenerationRequest, SamplingParams
from distilgpt2_api.core.scheduler import Completion
from distilgpt2_api.http_api.openai.protocol import GREEDY_BELOW_TEMPERATURE, finish_reason_of
from distilgpt2_api.http_api.protocol import Bounds, Seed, StopList, StopString, StrictModel, TopP, Usage

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


class ChatCompletionRequest(StrictModel):
    """OpenAI `POST /v1/chat/completions`; `chat_request_model` bounds the conversation from the settings."""

    model: str | None = None
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: int | None = Field(None, description="Deprecated by OpenAI for max_completion_tokens; either works.")
    max_completion_tokens: int | None = None
    n: int = 1
    temperature: float = Field(
        1.0, ge=0.0, le=2.0, description=f"Below {GREEDY_BELOW_TEMPERATURE} (0 included): greedy decoding."
    )
    top_p: TopP = 1.0
    stop: StopString | StopList | None = None
    seed: Seed | None = None
    stream: bool = Field(False, description="Streaming is not supported yet: true is rejected.")
    logprobs: bool = Field(False, description="Not supported yet: true is rejected.")
    user: str | None = None

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
        messages = [ChatMessage(role=m.role, content=m.text()) for m in self.messages]
        sampled = self.temperature >= GREEDY_BELOW_TEMPERATURE
        sampling = SamplingParams(do_sample=True, temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return GenerationRequest(
            prompt=template.render(messages),
            max_new_tokens=self.max_new_tokens(default_max_tokens),
            n=self.n,
            sampling=sampling if sampled else GREEDY,
            stop=(self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ()),
            deadline=deadline,
            add_special_tokens=False,  # the template wrote them
        )


def chat_request_model(bounds: Bounds) -> type[ChatCompletionRequest]:
    """`ChatCompletionRequest` with the settings' limits on message length, token counts and n."""
    bounded_message = create_model(
        "Message",
        __base__=Message,
        __module__=__name__,
        content=(bounds.prompt | Annotated[list[TextPart], Field(min_length=1)], ...),
    )
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


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: Literal["stop", "length"]
    time_limit_reached: bool = Field(
        False, description="Generation stopped at the request's time budget (finish_reason is then `length`)."
    )

    @classmethod
    def of(cls, completion: Completion, index: int) -> ChatChoice:
        reason, cut = finish_reason_of(completion)
        return cls(
            index=index, message=ChatMessageOut(content=completion.text), finish_reason=reason, time_limit_reached=cut
        )


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
