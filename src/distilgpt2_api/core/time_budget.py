"""How long one request may generate before it must answer with what it has."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol


class LambdaContext(Protocol):
    """What the time budget reads of the context Lambda passes (Mangum puts it in the scope as `aws.context`)."""

    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class TimeBudget:
    """The least of a configured maximum, the gateway's limit and Lambda's remaining time, less margins."""

    max_seconds: float
    gateway_timeout_seconds: float
    margin_seconds: float

    def seconds_for(self, scope: dict[str, Any]) -> float:
        limits = [self.max_seconds, self.gateway_timeout_seconds - self.margin_seconds]
        context: LambdaContext | None = scope.get("aws.context")  # under Lambda only
        if context is not None:
            limits.append(context.get_remaining_time_in_millis() / 1000 - self.margin_seconds)
        return max(0.0, min(limits))

    def deadline_for(self, scope: dict[str, Any]) -> float:
        """An absolute `time.monotonic()` deadline for the request in `scope`."""
        return time.monotonic() + self.seconds_for(scope)
