"""`POST /tokenize` and `POST /detokenize`, in vLLM's shapes (`tokens`, `count`, `max_model_len`; `prompt`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, create_model, model_validator

from distilgpt2_api.http_api.openai.chat_protocol import MAX_MESSAGES, Message
from distilgpt2_api.http_api.protocol import Bounds, StrictModel, TokenId


class TokenizeRequest(StrictModel):
    """A prompt, or chat messages (rendered with the model's chat template, as chat completions does)."""

    prompt: str | None = None
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)] | None = None
    add_special_tokens: bool = Field(True, description="For a prompt; a rendered conversation holds its own.")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send either prompt or messages")
        return self


def tokenize_request_model(bounds: Bounds, message: type[Message]) -> type[TokenizeRequest]:
    """`TokenizeRequest` with the settings' limit on prompt length, and the chat API's bounded messages."""
    return create_model(
        "TokenizeRequest",
        __base__=TokenizeRequest,
        __module__=__name__,
        prompt=(bounds.prompt | None, None),
        messages=(Annotated[list[message], Field(min_length=1, max_length=MAX_MESSAGES)] | None, None),  # type: ignore[valid-type]
    )


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int = Field(description="The model's context: prompt tokens plus max tokens must fit in it.")
    model: str


class DetokenizeRequest(StrictModel):
    tokens: Annotated[list[TokenId], Field(max_length=1_000_000)]


class DetokenizeResponse(BaseModel):
    prompt: str
