"""Responses kept for `previous_response_id` and `GET /v1/responses/{id}`: in this process's memory, bounded.

Each instance keeps its own (RESPONSE_STORE_SIZE, the least recently used dropped first; 0 keeps none). Instances
share nothing, so behind a load balancer or on AWS Lambda a later request may reach an instance that never saw the
response: it is a 404 that says so, and such clients send the whole conversation (`store: false` and every item
in `input`) instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from distilgpt2_api.core.chat import ChatMessage
from distilgpt2_api.http_api.errors import ApiError
from distilgpt2_api.http_api.responses.protocol import ResponseObject, output_turns


@dataclass(frozen=True)
class StoredResponse:
    response: ResponseObject
    conversation: tuple[ChatMessage, ...]  # its input (after its own previous response's) and its output, as turns


class ResponseStore:
    """The last `size` responses made with `store: true`, by id."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._responses)

    def keeps(self, store: bool | None) -> bool:
        """Whether a request's response is kept: asked for (`store`, by default true) and a store to keep it in."""
        return store is not False and self.size > 0

    def keeper(self, store: bool | None, conversation: Sequence[ChatMessage]) -> Callable[[ResponseObject], None]:
        """What to do with the finished response to a request whose turns were `conversation`: keep it, or not."""

        def keep(response: ResponseObject) -> None:
            if self.keeps(store):
                self._put(StoredResponse(response, (*conversation, *output_turns(response.output))))

        return keep

    def _put(self, stored: StoredResponse) -> None:
        self._responses[stored.response.id] = stored
        self._responses.move_to_end(stored.response.id)
        while len(self._responses) > self.size:
            self._responses.popitem(last=False)

    def get(self, response_id: str, param: str | None = None) -> StoredResponse:
        stored = self._responses.get(response_id)
        if stored is None:
            raise ApiError(
                404,
                "response_not_found",
                f"response {response_id!r} is not stored on this server instance. Responses are kept in one "
                f"instance's memory only (the last {self.size}; on AWS Lambda or behind a load balancer instances "
                "share nothing): send the whole conversation in `input` (with `store: false`) instead of "
                "previous_response_id.",
                param,
            )
        self._responses.move_to_end(response_id)
        return stored

    def history(self, response_id: str | None) -> tuple[ChatMessage, ...]:
        """The conversation that `previous_response_id` continues (none without one)."""
        return () if response_id is None else self.get(response_id, "previous_response_id").conversation

    def delete(self, response_id: str) -> None:
        self.get(response_id)
        del self._responses[response_id]
