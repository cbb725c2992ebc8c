"""A Lambda runtime that streams HTTP responses.

    python -m distilgpt2_api.aws_lambda.streaming_runtime handler.handler

The managed Python runtime (awslambdaric) and Mangum only return whole responses. This entry point
takes the Runtime API's invocations itself (runtime_api.py) and:

- for a Function URL event (the URL's invoke mode must be RESPONSE_STREAM) or a REST API event
  (the integration's response transfer mode must be STREAM), runs the app directly on the ASGI scope
  Mangum's adapters build, and streams its response as the app produces it: server-sent events
  leave token by token. A client that goes away (Lambda drops the stream) is a disconnect for the
  app, which cancels the generation;
- passes everything else (HTTP API events, warm-up pings, direct invocations) to the buffered
  handler named by its argument (the image's CMD, `handler.handler`), and returns its result as
  the managed runtime would.

Importing the handler imports the app, which loads the model: in the init phase, once per instance;
a failure there is reported to `/runtime/init/error`.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from distilgpt2_api.aws_lambda.runtime_api import (
    Invocation,
    InvocationContext,
    ResponseStream,
    RuntimeApi,
    RuntimeApiError,
    http_prelude,
)
from distilgpt2_api.observability import flush_metrics, logger, metrics

Handler = Callable[[Any, Any], Any]
MID_STREAM_ERROR = "the response failed after it began; see the function's logs"


def is_streamed_event(event: object) -> bool:
    """A Function URL event (payload 2.0 from a `.lambda-url.` domain) or a REST API event (payload 1.0,
    no `version`): the two invocations that can stream. HTTP APIs (either payload) cannot."""
    if not isinstance(event, dict) or not isinstance(event.get("requestContext"), dict):
        return False
    if event.get("version") == "2.0":
        return ".lambda-url." in str(event["requestContext"].get("domainName") or "")
    return "resource" in event and "version" not in event


def load_handler(name: str) -> Handler:
    """`module.function`, as the managed runtime reads its handler setting."""
    module_name, _, function_name = name.rpartition(".")
    handler: Handler = getattr(importlib.import_module(module_name), function_name)
    return handler


class StreamingRuntime:
    """The invocation loop: `/next`, then a streamed or a buffered response, until the Runtime API goes away."""

    def __init__(self, api: RuntimeApi, buffered: Handler) -> None:
        from distilgpt2_api.aws_lambda.handler import asgi_handler  # the app, already loaded by `buffered`

        self.api = api
        self.buffered = buffered
        self.adapter = asgi_handler
        # Powertools' log keys and cold-start flag for each streamed invocation, as handler.handler has them.
        self._stream = logger.inject_lambda_context(clear_state=True)(self._stream_invocation)

    def serve(self) -> None:
        while True:
            self.handle(self.api.next_invocation())

    def handle(self, invocation: Invocation) -> None:
        if invocation.trace_id:
            os.environ["_X_AMZN_TRACE_ID"] = invocation.trace_id
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        context = InvocationContext.of(invocation)
        if is_streamed_event(invocation.event):
            self._stream(invocation.event, context)
            return
        try:
            result = self.buffered(invocation.event, context)
        except Exception as error:
            logger.exception("invocation failed")
            self._report(self.api.post_invocation_error, invocation.request_id, error)
            return
        self._report(self.api.post_response, invocation.request_id, result)

    @staticmethod
    def _report(post: Callable[[str, Any], None], request_id: str, result: Any) -> None:
        # A refused answer (a result over Lambda's size limit, an invocation already timed out) ends
        # this invocation, not the runtime: only a failing `/next` does.
        try:
            post(request_id, result)
        except RuntimeApiError as error:
            logger.error("the Runtime API refused the answer", extra={"error": str(error)[:500]})

    def _stream_invocation(self, event: dict[str, Any], context: InvocationContext) -> None:
        if logger.get_current_keys().get("cold_start"):
            metrics.add_metric(name="ColdStart", unit=MetricUnit.Count, value=1)
        try:
            _event_loop().run_until_complete(self._stream_async(event, context))
        except Exception as error:  # nothing was streamed: Lambda reports the invocation as failed
            logger.exception("streamed invocation failed before its response began")
            self._report(self.api.post_invocation_error, context.aws_request_id, error)
        finally:
            flush_metrics()

    async def _stream_async(self, event: dict[str, Any], context: InvocationContext) -> None:
        try:
            adapter = self.adapter.infer(event, context)
            scope, body = adapter.scope, adapter.body
            if not (isinstance(scope["method"], str) and isinstance(scope["path"], str)):
                raise TypeError("the HTTP method and path must be strings")
        except (RuntimeError, KeyError, TypeError, AttributeError, ValueError):
            # Malformed: the buffered handler answers with the API's 400, which is streamed as it is.
            await self._stream_result(self.buffered(event, context), context.aws_request_id)
            return
        await stream_asgi(self.adapter.app, scope, body, self.api, context.aws_request_id)

    async def _stream_result(self, result: dict[str, Any], request_id: str) -> None:
        """A buffered handler's HTTP result, sent as a streamed HTTP response."""
        headers = [(k.encode(), str(v).encode()) for k, v in (result.get("headers") or {}).items()]
        headers += [(b"set-cookie", c.encode()) for c in result.get("cookies") or []]
        body = result.get("body") or ""
        raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
        stream = await self.api.open_stream(request_id)
        await stream.write(http_prelude(int(result.get("statusCode", 200)), headers))
        await stream.write(raw)
        await stream.finish()


async def stream_asgi(app: Any, scope: dict[str, Any], body: bytes, api: RuntimeApi, request_id: str) -> None:
    """Run the ASGI `app` for one request and stream its response to the invocation `request_id`.

    The response's start opens the stream (with the prelude), each body message is one chunk. The stream
    ends when the app returns, not at its last body message: what the app does after it (its request log
    line, EMF metrics) happens before Lambda may freeze the instance. An exception before the start
    propagates (nothing was sent); after it, unless the body was complete, the stream ends with Lambda's
    error trailers. When the stream is dropped, the app receives `http.disconnect`.
    """
    stream: ResponseStream | None = None
    ended = asyncio.Event()  # the response is complete, or its stream was dropped: the app sees a disconnect
    complete = False  # the app sent its last body message
    request_sent = False
    watch: asyncio.Future[Any] | None = None

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await ended.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal stream, watch, complete
        if message["type"] == "http.response.start" and stream is None:
            stream = await api.open_stream(request_id)
            watch = asyncio.ensure_future(stream.gone.wait())
            watch.add_done_callback(lambda _: ended.set())
            await stream.write(http_prelude(message["status"], message.get("headers") or []))
        elif message["type"] == "http.response.body" and stream is not None:
            await stream.write(message.get("body", b""))
            if not message.get("more_body", False):
                complete = True
                ended.set()

    try:
        await app(scope, receive, send)
    except Exception as error:
        if stream is None:
            raise
        if complete or stream.gone.is_set():
            logger.exception("the app failed after its response ended")
        else:
            logger.exception("the response failed after it began")
            await stream.fail(error, MID_STREAM_ERROR)
    finally:
        ended.set()
        if watch is not None:
            watch.cancel()
        if stream is not None:
            if stream.gone.is_set():
                logger.info("stream dropped by Lambda (the client went away): generation cancelled")
            elif not stream.finished:  # the app returned (or failed after its last body message)
                await stream.finish()
            await stream.close()
    if stream is None:
        raise RuntimeError("the app returned without starting a response")


def _event_loop() -> asyncio.AbstractEventLoop:
    """The thread's event loop, the one Mangum runs the app on for buffered invocations."""
    try:
        return asyncio.get_event_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        return loop


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    api = RuntimeApi(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        runtime = StreamingRuntime(api, load_handler(args[0] if args else "handler.handler"))
    except Exception as error:
        logger.exception("init failed")
        api.post_init_error(error)
        sys.exit(1)
    try:
        runtime.serve()
    except RuntimeApiError as error:
        logger.error("the Runtime API went away", extra={"error": str(error)})
        sys.exit(1)


if __name__ == "__main__":
    main()
