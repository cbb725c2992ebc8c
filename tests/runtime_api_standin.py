"""A stand-in for the Lambda Runtime API on loopback, written from AWS's documented protocol.

It plays Lambda's side: `GET /2018-06-01/runtime/invocation/next` waits for an event queued with
`invoke`; `POST .../invocation/{id}/response` takes a buffered JSON answer or, with
`Lambda-Runtime-Function-Response-Mode: streaming`, a chunked stream whose chunks it timestamps as
they arrive and whose trailers it keeps; `.../invocation/{id}/error` and `/runtime/init/error` record
failures. An invocation can drop its stream after some chunks (a client that went away): the
connection is reset, as Lambda's is.
"""

from __future__ import annotations

import base64
import json
import queue
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2018-06-01/runtime"
DELIMITER = b"\0" * 8
_STOP = object()


@dataclass
class Call:
    """One invocation, as Lambda sees it: the event sent, and whatever the runtime answered."""

    event: Any
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    deadline_s: float = 60.0
    drop_after_chunks: int | None = None  # reset the stream after this many body chunks
    done: threading.Event = field(default_factory=threading.Event)
    headers: dict[str, str] = field(default_factory=dict)  # of the /response or /error request
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, data) of a streamed answer
    ended_at: float | None = None  # when a streamed answer's last (empty) chunk arrived
    trailers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # the whole answer, de-chunked
    error: dict[str, Any] | None = None  # the body of a POST to /error
    dropped: bool = False

    @property
    def streamed(self) -> bool:
        return self.headers.get("lambda-runtime-function-response-mode") == "streaming"

    def result(self) -> Any:
        """A buffered answer's JSON."""
        return json.loads(self.body)

    def prelude(self) -> dict[str, Any]:
        metadata, delimiter, _ = self.body.partition(DELIMITER)
        assert delimiter, "no 8-NUL delimiter after the prelude"
        prelude: dict[str, Any] = json.loads(metadata)
        return prelude

    def payload(self) -> bytes:
        return self.body.partition(DELIMITER)[2]

    def error_trailer(self) -> dict[str, Any] | None:
        encoded = self.trailers.get("lambda-runtime-function-error-body")
        return json.loads(base64.b64decode(encoded)) if encoded else None


class RuntimeApiStandIn:
    def __init__(self) -> None:
        self.pending: queue.Queue[Any] = queue.Queue()
        self.calls: dict[str, Call] = {}
        self.init_error: dict[str, Any] | None = None
        self.init_error_type: str | None = None
        self.init_failed = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def invoke(self, event: Any, **options: Any) -> Call:
        call = Call(event, **options)
        self.calls[call.request_id] = call
        self.pending.put(call)
        return call

    def invoke_and_wait(self, event: Any, timeout: float = 60, **options: Any) -> Call:
        call = self.invoke(event, **options)
        assert call.done.wait(timeout), f"no answer to {call.request_id} in {timeout} s"
        return call

    def close(self) -> None:
        self.pending.put(_STOP)  # a waiting /next gets a 500: the runtime stops, as it must when the API fails
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def runtime_api_standin() -> Iterator[RuntimeApiStandIn]:
    api = RuntimeApiStandIn()
    try:
        yield api
    finally:
        api.close()


def _handler_for(api: RuntimeApiStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if self.path != f"{PREFIX}/invocation/next":
                self._answer(404, {"errorMessage": "unknown path"})
                return
            call = api.pending.get()
            if call is _STOP:
                self._answer(500, {"errorMessage": "stand-in closed"})
                return
            body = json.dumps(call.event).encode()
            self.send_response(200)
            self.send_header("Lambda-Runtime-Aws-Request-Id", call.request_id)
            self.send_header("Lambda-Runtime-Deadline-Ms", str(int((time.time() + call.deadline_s) * 1000)))
            self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:f")
            self.send_header("Lambda-Runtime-Trace-Id", "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Sampled=0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            if self.path == f"{PREFIX}/init/error":
                api.init_error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
                api.init_error = json.loads(self._read_body())
                self._answer(202, {"status": "OK"})
                api.init_failed.set()
                return
            parts = self.path.removeprefix(f"{PREFIX}/invocation/").split("/")
            call = api.calls.get(parts[0]) if len(parts) == 2 else None
            if call is None or parts[1] not in ("response", "error"):
                self._answer(404, {"errorMessage": "unknown invocation"})
                return
            call.headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                if parts[1] == "error":
                    call.error = json.loads(self._read_body())
                elif call.streamed:
                    if not self._read_chunks(call):
                        return  # dropped: no answer, the connection is gone
                else:
                    call.body = self._read_body()
                self._answer(202, {"status": "OK"})
            finally:
                call.done.set()

        def _read_body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def _read_chunks(self, call: Call) -> bool:
            """Read a chunked body and its trailers; False if the stream was dropped on purpose."""
            assert self.headers.get("Transfer-Encoding", "").lower() == "chunked", "a stream must be chunked"
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    call.ended_at = time.monotonic()
                    break
                data = self.rfile.read(size)
                assert self.rfile.read(2) == b"\r\n", "a chunk must end with CRLF"
                call.chunks.append((time.monotonic(), data))
                call.body += data
                body_chunks = len(call.chunks) - 1  # the first chunk is the prelude
                if call.drop_after_chunks is not None and body_chunks >= call.drop_after_chunks:
                    self._reset()
                    call.dropped = True
                    return False
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                call.trailers[name.strip().lower()] = value.strip()
            return True

        def _reset(self) -> None:
            # Linger 0: close with a reset, as a connection torn down under the runtime.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

        def _answer(self, status: int, document: dict[str, Any]) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
