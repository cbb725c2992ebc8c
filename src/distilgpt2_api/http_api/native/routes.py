"""Health, `POST /generate` and the tutorial's `GET /{prompt}`.

Routes are built from the settings' bounds, so no `from __future__ import annotations` here:
FastAPI reads each endpoint's annotations, and some of them are local to the builder.
"""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import Discriminator, Tag

from distilgpt2_api import __version__
from distilgpt2_api.core.request import DEFAULT_MAX_NEW_TOKENS, tutorial_request
from distilgpt2_api.http_api.dependencies import ERROR_RESPONSES, GenerationDep, SchedulerDep, usage_of
from distilgpt2_api.http_api.native.protocol import (
    Details,
    GeneratedSequences,
    GenerateResponse,
    StreamEvents,
    StreamResponse,
    generate_request_model,
    with_prompt,
)
from distilgpt2_api.http_api.protocol import BODY_SHAPES, Bounds, HealthResponse, KernelsInfo
from distilgpt2_api.http_api.routing import CatchAllRoute
from distilgpt2_api.http_api.streaming import event_stream, sse_response_doc
from distilgpt2_api.http_api.tgi import routes as tgi
from distilgpt2_api.http_api.tgi.protocol import TgiRequest, TgiResponse, tgi_request_models

EVENTS = (StreamResponse,)  # what its streams send, for the OpenAPI schema
FLAT, TGI = BODY_SHAPES  # the tags of the two bodies /generate and /generate_stream take
STREAM_DOC = "Server-Sent Events: one per token; a sequence's last one carries `generated_text` and `details`."


def health_router() -> APIRouter:
    """Routes that never touch the model: open even when API keys are configured."""
    router = APIRouter()

    @router.get("/", response_model=HealthResponse, tags=["health"])
    # HEAD too: load balancers and uptime checks send it (the server sends the headers, no body).
    @router.head("/", response_model=HealthResponse, include_in_schema=False)
    async def health(scheduler: SchedulerDep) -> HealthResponse:
        """Liveness, and which model is served. Never touches the model."""
        kernels = KernelsInfo.model_validate(scheduler.kernels, from_attributes=True)
        return HealthResponse(model=scheduler.model_name, version=__version__, kernels=kernels)

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> None:
        """Every browser asks for it: a 404, before `/{prompt}` would run the model on it."""
        raise HTTPException(404, "no icon here")

    return router


def _shape(body: object) -> str:
    """Which body a `/generate` request sent: text-generation-inference's (`inputs`) or this API's flat one."""
    if isinstance(body, TgiRequest) or (isinstance(body, dict) and "inputs" in body):
        return TGI
    return FLAT


def generation_router(bounds: Bounds) -> APIRouter:
    """`POST /generate` and `GET /{prompt}`, their limits from `bounds`. `/{prompt}` takes any single path
    segment that no fixed route owns (under any method)."""
    router = APIRouter(tags=["generation"])
    Flat = generate_request_model(bounds)
    Tgi, _ = tgi_request_models(bounds)
    # Both shapes on one route: this API's flat body, and text-generation-inference's `inputs` + `parameters`.
    Body = Annotated[Annotated[Flat, Tag(FLAT)] | Annotated[Tgi, Tag(TGI)], Discriminator(_shape)]  # type: ignore[valid-type]

    @router.post("/generate", response_model=GenerateResponse | TgiResponse, responses=ERROR_RESPONSES)
    async def generate(body: Body, generation: GenerationDep) -> GenerateResponse | TgiResponse:
        """Generate continuations of `prompt` (parameter names follow text-generation-inference); with TGI's
        `inputs` and `parameters`, TGI's answer."""
        if isinstance(body, TgiRequest):
            return await tgi.generate(body, generation)
        result = await generation.run(body.to_generation_request(generation.deadline))
        details = body.details or body.top_n_tokens > 0
        top = body.top_n_tokens > 0
        return GenerateResponse(
            generated_sequences=with_prompt(body.prompt if body.return_full_text else "", result.completions),
            model=generation.scheduler.model_name,
            finish_reasons=[c.finish_reason for c in result.completions],
            usage=usage_of(result),
            seed=result.seed,
            details=[Details.of(c, result.seed, top=top) for c in result.completions] if details else None,
        )

    @router.post(
        "/generate_stream",
        response_class=Response,
        responses={**ERROR_RESPONSES, 200: sse_response_doc(StreamResponse, description=STREAM_DOC)},
    )
    async def generate_stream(body: Body, generation: GenerationDep) -> Response:
        """`POST /generate`'s request, answered token by token as Server-Sent Events (text-generation-inference's
        events). An error after the first event ends the stream with an error event."""
        if isinstance(body, TgiRequest):
            return await tgi.generate_stream(body, generation)
        request = body.to_generation_request(generation.deadline, logprobs=True)
        prefix = body.prompt if body.return_full_text else ""
        return await event_stream(generation, [request], StreamEvents(prefix, request.sampling.seed_in_use))

    async def generate_from_path(
        prompt: Annotated[bounds.prompt, Path()],  # type: ignore[name-defined]
        generation: GenerationDep,
        max_new_tokens: Annotated[bounds.max_new_tokens, Query()] = DEFAULT_MAX_NEW_TOKENS,  # type: ignore[name-defined]
        num_return_sequences: Annotated[bounds.sequences, Query()] = 1,  # type: ignore[name-defined]
    ) -> GeneratedSequences:
        """The tutorial's route: sampled continuations (top-k 50, as its pipeline did), prompt included."""
        request = tutorial_request(prompt, max_new_tokens, num_return_sequences, generation.deadline)
        result = await generation.run(request)
        return GeneratedSequences(generated_sequences=with_prompt(prompt, result.completions))

    router.add_api_route(
        "/{prompt}",
        generate_from_path,
        methods=["GET"],
        response_model=GeneratedSequences,
        responses=ERROR_RESPONSES,
        route_class_override=CatchAllRoute,
    )
    return router
