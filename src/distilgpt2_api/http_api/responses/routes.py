"""OpenAI's Responses API: `POST /v1/responses`, and `GET`/`DELETE /v1/responses/{response_id}` for stored ones.

Built from the settings' bounds: no `from __future__ import annotations` (see native/routes.py).
"""

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel

from distilgpt2_api.http_api.dependencies import ERROR_RESPONSES, GenerationDep
from distilgpt2_api.http_api.protocol import Bounds, ErrorResponse
from distilgpt2_api.http_api.responses.protocol import (
    ResponseDeleted,
    ResponseDraft,
    ResponseEvents,
    ResponseObject,
    ResponseStreamEvent,
    response_request_model,
)
from distilgpt2_api.http_api.responses.store import ResponseStore
from distilgpt2_api.http_api.streaming import event_stream, sse_response_doc

EVENTS = (ResponseStreamEvent,)  # what its stream sends, for the OpenAPI schema
NOT_STORED = {404: {"model": ErrorResponse, "description": "Unknown model, or a response this instance does not hold."}}
STREAM_DOC = "The response; with `stream: true`, Server-Sent Events named by their `type`, each with a sequence_number."
ResponseId = Annotated[str, Path(max_length=128)]


def responses_router(bounds: Bounds, store_size: int) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    Body = response_request_model(bounds)
    store = ResponseStore(store_size)
    stream_doc = sse_response_doc(ResponseStreamEvent, description=STREAM_DOC)

    @router.post(
        "/responses", response_model=ResponseObject, responses={**ERROR_RESPONSES, **NOT_STORED, 200: stream_doc}
    )
    async def create_response(body: Body, generation: GenerationDep) -> BaseModel | Response:  # type: ignore[valid-type]
        """The input (after a stored previous response's conversation) rendered with the model's chat template.
        With `stream: true`, Server-Sent Events: response.created ... response.completed."""
        conversation = body.conversation(store.history(body.previous_response_id))
        request = body.to_generation_request(
            generation.scheduler.chat_template,
            conversation,
            default_max_tokens=bounds.max_new_tokens_limit,
            deadline=generation.deadline,
        )
        draft = ResponseDraft(generation.scheduler.model_name, body.echo(stored=store.keeps(body.store)))
        keep = store.keeper(body.store, conversation)
        if body.stream:
            return await event_stream(generation, [request], ResponseEvents(draft, body.offered_tools, keep))
        response = draft.answer(await generation.run(request), body.offered_tools)
        keep(response)
        return response

    @router.get("/responses/{response_id}", response_model=ResponseObject, responses={**ERROR_RESPONSES, **NOT_STORED})
    async def get_response(response_id: ResponseId) -> ResponseObject:
        """A response this instance stored (`store: true`, the default)."""
        return store.get(response_id).response

    @router.delete(
        "/responses/{response_id}", response_model=ResponseDeleted, responses={**ERROR_RESPONSES, **NOT_STORED}
    )
    async def delete_response(response_id: ResponseId) -> ResponseDeleted:
        """Forget a stored response."""
        store.delete(response_id)
        return ResponseDeleted(id=response_id)

    return router
