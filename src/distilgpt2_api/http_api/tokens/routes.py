"""`POST /tokenize` and `POST /detokenize`: the served tokenizer, so clients can budget requests.

Built from the settings' bounds: no `from __future__ import annotations` (see native/routes.py).
"""

from fastapi import APIRouter

from distilgpt2_api.http_api.dependencies import ERROR_RESPONSES, SchedulerDep
from distilgpt2_api.http_api.errors import ApiError
from distilgpt2_api.http_api.openai.chat_protocol import chat_prompt, message_model
from distilgpt2_api.http_api.protocol import Bounds
from distilgpt2_api.http_api.tokens.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeResponse,
    tokenize_request_model,
)


def tokens_router(bounds: Bounds) -> APIRouter:
    router = APIRouter(tags=["tokens"])
    Body = tokenize_request_model(bounds, message_model(bounds))

    @router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
    async def tokenize(body: Body, scheduler: SchedulerDep) -> TokenizeResponse:  # type: ignore[valid-type]
        """Token ids of a prompt, or of chat messages as `/v1/chat/completions` would send them to the model."""
        tokenizer = scheduler.tokenizer
        if body.messages is not None:
            ids = tokenizer.encode(chat_prompt(scheduler.chat_template, body.messages), add_special_tokens=False)
        else:
            ids = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return TokenizeResponse(
            tokens=ids, count=len(ids), max_model_len=scheduler.info.context_length, model=scheduler.model_name
        )

    @router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
    async def detokenize(body: DetokenizeRequest, scheduler: SchedulerDep) -> DetokenizeResponse:
        """The text of token ids (special tokens left out, as in generated text)."""
        tokenizer = scheduler.tokenizer
        unknown = next((i for i in body.tokens if i >= tokenizer.vocab_size), None)
        if unknown is not None:
            message = f"token id {unknown} is not in the vocabulary (size {tokenizer.vocab_size})"
            raise ApiError(422, "unknown_token", message, "tokens")
        return DetokenizeResponse(prompt=tokenizer.decode(body.tokens))

    return router
