"""A client for the Lambda Runtime API (version 2018-06-01), with its response streaming protocol.

What AWS documents for custom runtimes ("Lambda runtime API", "Implementing response streaming in a
custom runtime") and for HTTP responses streamed to a Function URL or a REST API ("Lambda proxy
integration format for response streaming"):

- `GET /runtime/invocation/next` waits (no timeout) for the next event; its headers carry the request
  id, the deadline, the function ARN and the X-Ray trace id.
- `POST /runtime/invocation/{id}/response` answers it: one JSON document, or, with the header
  `Lambda-Runtime-Function-Response-Mode: streaming` and chunked transfer encoding, a stream.
  An HTTP response streamed this way has the content type
  `application/vnd.awslambda.http-integration-response`: a JSON prelude (status, headers, cookies),
  8 NUL bytes, then the body as it is produced.
- An error after the stream began is reported in the trailers `Lambda-Runtime-Function-Error-Type`
  and `Lambda-Runtime-Function-Error-Body` (base64 of the error document), declared up front in `Trailer`.
- `POST /runtime/invocation/{id}/error` and `POST /runtime/init/error` report the other failures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any

API_VERSION = "2018-06-01"
HTTP_INTEGRATION_RESPONSE = "application/vnd.awslambda.http-integration-response"
PRELUDE_DELIMITER = b"\0" * 8
RESPONSE_MODE_HEADER = "Lambda-Runtime-Function-Response-Mode"
ERROR_TYPE = "Lambda-Runtime-Function-Error-Type"
ERROR_BODY = "Lambda-Runtime-Function-Error-Body"
# Framing belongs to each hop: the Function URL or the REST API frames the body for its client.
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class RuntimeApiError(RuntimeError):
    """The Runtime API refused a request or went away: the runtime cannot go on."""


@dataclass(frozen=True)
class Invocation:
    """One event from `/next`, with the headers that describe its invocation."""

    request_id: str
    deadline_ms: int
    invoked_function_arn: str
    trace_id: str | None
    event: Any


@dataclass
class InvocationContext:
    """What the managed runtime passes as a handler's `context`, for one invocation."""

    aws_request_id: str
    invoked_function_arn: str
    deadline_ms: int
    function_name: str
    function_version: str
    memory_limit_in_mb: int
    log_group_name: str
    log_stream_name: str
    identity: Any = None
    client_context: Any = None

    @classmethod
    def of(cls, invocation: Invocation, environ: dict[str, str] | None = None) -> InvocationContext:
        env = os.environ if environ is None else environ
        return cls(
            aws_request_id=invocation.request_id,
            invoked_function_arn=invocation.invoked_function_arn,
            deadline_ms=invocation.deadline_ms,
            function_name=env.get("AWS_LAMBDA_FUNCTION_NAME", ""),
            function_version=env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            memory_limit_in_mb=int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0") or 0),
            log_group_name=env.get("AWS_LAMBDA_LOG_GROUP_NAME", ""),
            log_stream_name=env.get("AWS_LAMBDA_LOG_STREAM_NAME", ""),
        )

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.deadline_ms - int(time.time() * 1000))


def error_document(error: BaseException, *, message: str | None = None) -> dict[str, Any]:
    """The error shape Lambda expects in `/error` bodies and the error trailer."""
    return {
        "errorMessage": str(error) if message is None else message,
        "errorType": type(error).__name__,
        "stackTrace": [] if message is not None else traceback.format_tb(error.__traceback__),
    }


def http_prelude(status: int, headers: list[tuple[bytes, bytes]] | list[list[bytes]]) -> bytes:
    """The JSON metadata and delimiter that open an HTTP response streamed to a Function URL or REST API."""
    single: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "set-cookie":
            cookies.append(value)
        elif name not in _HOP_BY_HOP:
            single[name] = f"{single[name]},{value}" if name in single else value
    metadata = {"statusCode": status, "headers": single, "cookies": cookies}
    return json.dumps(metadata, separators=(",", ":")).encode() + PRELUDE_DELIMITER


class RuntimeApi:
    """The Runtime API at `host:port` (the `AWS_LAMBDA_RUNTIME_API` variable)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host or address, int(port or 80)
        self.base = f"/{API_VERSION}/runtime"

    def next_invocation(self) -> Invocation:
        status, headers, body = self._request("GET", f"{self.base}/invocation/next", timeout=None)
        if status != 200:
            raise RuntimeApiError(f"/next answered {status}: {body[:200]!r}")
        return Invocation(
            request_id=headers["lambda-runtime-aws-request-id"],
            deadline_ms=int(headers.get("lambda-runtime-deadline-ms", "0")),
            invoked_function_arn=headers.get("lambda-runtime-invoked-function-arn", ""),
            trace_id=headers.get("lambda-runtime-trace-id"),
            event=json.loads(body) if body else None,
        )

    def post_response(self, request_id: str, payload: Any) -> None:
        """A buffered response: the handler's result as one JSON document."""
        self._post(f"{self.base}/invocation/{request_id}/response", json.dumps(payload).encode(), {})

    def post_invocation_error(self, request_id: str, error: BaseException) -> None:
        self._post_error(f"{self.base}/invocation/{request_id}/error", error)

    def post_init_error(self, error: BaseException) -> None:
        self._post_error(f"{self.base}/init/error", error)

    async def open_stream(self, request_id: str, content_type: str = HTTP_INTEGRATION_RESPONSE) -> ResponseStream:
        """Begin a streamed response to `request_id`: the request's head now, its body chunk by chunk."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # small chunks leave at once, never held back to be coalesced
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (
            f"POST {self.base}/invocation/{request_id}/response HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"{RESPONSE_MODE_HEADER}: streaming\r\n"
            "Transfer-Encoding: chunked\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Trailer: {ERROR_TYPE}, {ERROR_BODY}\r\n"
            "\r\n"
        )
        writer.write(head.encode("latin-1"))
        stream = ResponseStream(reader, writer)
        await stream.drain()
        return stream

    def _post_error(self, path: str, error: BaseException) -> None:
        document = error_document(error)
        self._post(path, json.dumps(document).encode(), {ERROR_TYPE: document["errorType"]})

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        status, _, answer = self._request("POST", path, body=body, headers=headers, timeout=30)
        if status >= 300:
            raise RuntimeApiError(f"POST {path} answered {status}: {answer[:200]!r}")

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None,
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        except (OSError, http.client.HTTPException) as error:
            raise RuntimeApiError(f"{method} {path}: {error!r}") from error
        finally:
            connection.close()


class ResponseStream:
    """One streamed response in flight.

    `gone` is set when the Runtime API ends the request before the body did: Lambda dropped the
    invocation's stream, because the client went away or the response outgrew its limit.
    Writes after that are dropped.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.gone = asyncio.Event()
        self.finished = False
        self.status: int | None = None
        self._answer = asyncio.ensure_future(self._read_answer(reader))

    async def write(self, data: bytes) -> None:
        if data and not self.gone.is_set() and not self.finished:
            self._writer.write(b"%x\r\n%b\r\n" % (len(data), data))
            await self.drain()

    async def finish(self) -> None:
        """End the body: the last chunk, then the Runtime API's answer."""
        await self._end(b"0\r\n\r\n")

    async def fail(self, error: BaseException, message: str) -> None:
        """End the stream with the error trailers: Lambda reports the invocation as failed."""
        document = json.dumps(error_document(error, message=message)).encode()
        trailers = f"{ERROR_TYPE}: {type(error).__name__}\r\n{ERROR_BODY}: {base64.b64encode(document).decode()}\r\n"
        await self._end(b"0\r\n" + trailers.encode("latin-1") + b"\r\n")

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError:  # reset or closed by the Runtime API
            self.gone.set()

    async def close(self) -> None:
        self._answer.cancel()
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def _end(self, last: bytes) -> None:
        if self.finished or self.gone.is_set():
            return
        self.finished = True
        self._writer.write(last)
        await self.drain()
        try:
            self.status = await asyncio.wait_for(asyncio.shield(self._answer), timeout=30)
        except (TimeoutError, asyncio.CancelledError):
            self.status = None
        finally:
            await self.close()

    async def _read_answer(self, reader: asyncio.StreamReader) -> int | None:
        """The Runtime API's answer; arriving before the body ended, it means the stream was dropped."""
        try:
            status_line = await reader.readline()
            status = int(status_line.split()[1]) if status_line.startswith(b"HTTP/") else None
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            status = None
        if not self.finished:
            self.gone.set()
        return status
