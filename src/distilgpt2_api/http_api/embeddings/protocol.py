"""OpenAI's embeddings shapes. `CreateEmbeddingRequest.to_embedding_request` is this API's one translation point.

`encoding_format: base64` is each vector's little-endian float32 bytes in base64, as the `openai` SDK sends by
default and decodes.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Discriminator, Field, Tag, create_model

from distilgpt2_api.core.request import EmbeddingRequest
from distilgpt2_api.http_api.protocol import Bounds, StrictModel

MAX_EMBEDDING_INPUTS = 2048  # inputs in one request (OpenAI's own limit); their tokens together: MAX_BATCH_TOKENS

EncodingFormat = Literal["float", "base64"]


class CreateEmbeddingRequest(StrictModel):
    model: str | None = None
    input: Any = Field(description="A text, a list of texts, a list of token ids, or a list of lists of token ids.")
    encoding_format: EncodingFormat = Field(
        "float", description="`float`: numbers; `base64`: each vector's little-endian float32 bytes, base64-encoded."
    )
    dimensions: int | None = Field(
        None,
        ge=1,
        description="Fewer dimensions than the model's: the first `dimensions` of each vector, normalised again to "
        "length 1 (Matryoshka truncation: meaningful for models trained for it). Default: the model's.",
    )
    user: str | None = Field(None, max_length=256, description="Accepted for OpenAI clients; not used.")

    def to_embedding_request(self) -> EmbeddingRequest:
        """This API's request in the core's words: every input as a text or a tuple of token ids."""
        value = self.input  # never empty (its bounds)
        inputs = [value] if isinstance(value, str) or isinstance(value[0], int) else value
        return EmbeddingRequest(
            inputs=tuple(i if isinstance(i, str) else tuple(i) for i in inputs),
            model=self.model,
            dimensions=self.dimensions,
        )


def _input_shape(value: object) -> str:
    """Which of the four shapes `input` is read as (an error then names it: `input.texts`...)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list) and value and isinstance(value[0], int):
        return "token_ids"
    if isinstance(value, list) and value and isinstance(value[0], list):
        return "token_id_lists"
    return "texts"


def embedding_request_model(bounds: Bounds) -> type[CreateEmbeddingRequest]:
    """`CreateEmbeddingRequest` with the settings' limits on each input (characters, token ids) and their count."""
    many = Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)
    shapes = (
        Annotated[bounds.prompt, Tag("text")]
        | Annotated[list[bounds.prompt], many, Tag("texts")]  # type: ignore[name-defined]
        | Annotated[bounds.token_ids, Tag("token_ids")]
        | Annotated[list[bounds.token_ids], many, Tag("token_id_lists")]  # type: ignore[name-defined]
    )
    return create_model(
        "CreateEmbeddingRequest",
        __base__=CreateEmbeddingRequest,
        __module__=__name__,
        input=(Annotated[shapes, Discriminator(_input_shape)], ...),
    )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Length 1 (L2); with `encoding_format: base64`, its bytes.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

    @classmethod
    def of(
        cls, vectors: list[list[float]], encoding_format: EncodingFormat, *, model: str, prompt_tokens: int
    ) -> CreateEmbeddingResponse:
        return cls(
            data=[Embedding(index=i, embedding=encoded(v, encoding_format)) for i, v in enumerate(vectors)],
            model=model,
            usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )


def encoded(vector: list[float], encoding_format: EncodingFormat) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
