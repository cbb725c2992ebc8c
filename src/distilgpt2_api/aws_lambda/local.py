"""The Lambda handler on this machine, without Docker: a context stand-in, and `python -m distilgpt2_api invoke`."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_TIMEOUT_MILLIS = 60_000  # as a function with a 60 s timeout


@dataclass
class LocalContext:
    """The attributes of Lambda's context object that the service reads, for an invocation outside Lambda."""

    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = "distilgpt2-api-local"
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:distilgpt2-api-local"
    remaining_millis: int | None = None  # None: counts down from LOCAL_TIMEOUT_MILLIS since creation
    _created: float = field(default_factory=time.monotonic, repr=False)

    def get_remaining_time_in_millis(self) -> int:
        if self.remaining_millis is not None:
            return self.remaining_millis
        return max(0, LOCAL_TIMEOUT_MILLIS - int((time.monotonic() - self._created) * 1000))


def invoke(event_file: Path) -> int:
    """Send the event in `event_file` through `handler.handler`, as Lambda would, and print the result.

    The result goes to stdout as JSON (a JSON body shown parsed); logs go to stderr.
    """
    event = json.loads(event_file.read_text())
    from distilgpt2_api.observability import logger  # before the app: its log lines must not mix with the result

    if isinstance(logger.registered_handler, logging.StreamHandler):
        logger.registered_handler.setStream(sys.stderr)
    from distilgpt2_api.aws_lambda.handler import handler  # loads the model: the cold start

    stdout = sys.stdout
    sys.stdout = sys.stderr  # metrics (EMF) are printed too
    try:
        result = handler(event, LocalContext())
    finally:
        sys.stdout = stdout
    body = result.get("body") if isinstance(result, dict) else None
    if isinstance(body, str) and not result.get("isBase64Encoded"):
        with contextlib.suppress(ValueError):  # a page, an event stream: shown as it is
            result = {**result, "body": json.loads(body)}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if not isinstance(result, dict) or result.get("statusCode", 200) < 500 else 1
