"""text-generation-inference's `POST /` (its clients' default route), and its answers on `/generate` and
`/generate_stream` (http_api/native/routes.py takes both body shapes there).

Built from the settings' bounds: no `from __future__ import annotations` (see native/routes.py).
"""

from fastapi import APIRouter
from fastapi.responses import Response

from distilgpt2_api.http_api.dependencies import ERROR_RESPONSES, Generation, GenerationDep
from distilgpt2_api.http_api.native.protocol import StreamEvents, StreamResponse
from distilgpt2_api.http_api.protocol import Bounds
from distilgpt2_api.http_api.streaming import event_stream, sse_response_doc
from distilgpt2_api.http_api.tgi.protocol import TgiRequest, TgiResponse, tgi_reason, tgi_request_models

COMPAT_DOC = "`[{generated_text, details}]`; with `stream: true`, `/generate_stream`'s Server-Sent Events."


async def generate(body: TgiRequest, generation: Generation) -> TgiResponse:
    """TGI's `/generate`: the answer, and its details if asked for."""
    result = await generation.run(body.to_generation_request(generation.deadline))
    (completion,) = result.completions
    return TgiResponse.of(body, completion, result.seed)


async def generate_stream(body: TgiRequest, generation: Generation) -> Response:
    """TGI's `/generate_stream`: an event per token, the last with the whole text and details."""
    request = body.to_generation_request(generation.deadline, logprobs=True)
    events = StreamEvents(body.prefix, request.sampling.seed_in_use, tgi_reason)
    return await event_stream(generation, [request], events)


def tgi_router(bounds: Bounds) -> APIRouter:
    router = APIRouter(tags=["text-generation-inference"])
    _, Compat = tgi_request_models(bounds)

    @router.post(
        "/",
        response_model=list[TgiResponse],
        responses={**ERROR_RESPONSES, 200: sse_response_doc(StreamResponse, description=COMPAT_DOC)},
    )
    async def compat_generate(body: Compat, generation: GenerationDep) -> list[TgiResponse] | Response:  # type: ignore[valid-type]
        """text-generation-inference's route for its clients (huggingface_hub's `InferenceClient`): `inputs` and
        `parameters`, answered as a list of one, or streamed with `stream: true`."""
        if body.stream:
            return await generate_stream(body, generation)
        return [await generate(body, generation)]

    return router
