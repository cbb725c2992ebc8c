"""`POST /v1/embeddings`: OpenAI's embeddings, computed beside generation (the SDK's `embeddings.create` works).

Built from the settings' bounds: no `from __future__ import annotations` (see native/routes.py).
"""

from fastapi import APIRouter

from distilgpt2_api.http_api.dependencies import SchedulerDep
from distilgpt2_api.http_api.embeddings.protocol import CreateEmbeddingResponse, embedding_request_model
from distilgpt2_api.http_api.openai.routes import OPENAI_ERRORS
from distilgpt2_api.http_api.protocol import Bounds


def embeddings_router(bounds: Bounds) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    Body = embedding_request_model(bounds)

    @router.post("/embeddings", response_model=CreateEmbeddingResponse, responses=OPENAI_ERRORS)
    async def create_embedding(body: Body, scheduler: SchedulerDep) -> CreateEmbeddingResponse:  # type: ignore[valid-type]
        """One unit-length vector per input, pooled over its tokens (mean, or the model's own pooling). Needs
        ENGINE=llamacpp; inputs longer than the engine embeds at once are refused, never truncated."""
        valid = scheduler.validate_embedding(body.to_embedding_request())
        vectors = await scheduler.embed(valid)
        return CreateEmbeddingResponse.of(
            vectors, body.encoding_format, model=scheduler.model_name, prompt_tokens=valid.prompt_tokens
        )

    return router
