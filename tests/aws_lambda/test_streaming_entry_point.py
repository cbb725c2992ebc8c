"""The streaming runtime as Lambda starts it: its own process, the init phase, then invocations from the Runtime API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime_api_standin import RuntimeApiStandIn, runtime_api_standin

from event_factory import http_api_event, scheduled_event

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINT = ["-m", "distilgpt2_api.aws_lambda.streaming_runtime", "handler.handler"]


@contextmanager
def runtime_process(model_dir: Path, log: Path) -> Iterator[tuple[RuntimeApiStandIn, subprocess.Popen[bytes]]]:
    env = {**os.environ, "MODEL_DIR": str(model_dir), "AWS_LAMBDA_FUNCTION_NAME": "distilgpt2-api"}
    # This checkout's package, whatever is installed: the test is of these files.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    with runtime_api_standin() as api, log.open("wb") as output:
        env["AWS_LAMBDA_RUNTIME_API"] = api.address
        process = subprocess.Popen([sys.executable, *ENTRY_POINT], cwd=REPO, env=env, stdout=output, stderr=output)
        try:
            yield api, process
        finally:
            process.kill()
            process.wait(timeout=30)


def test_the_entry_point_loads_once_then_streams_and_buffers(model_dir: Path, tmp_path: Path) -> None:
    with runtime_process(model_dir, tmp_path / "runtime.log") as (api, _):
        first = api.invoke_and_wait(scheduled_event(), timeout=120)  # waits for the init phase, as Lambda does
        assert first.result() == {"warmed": True, "cold_start": True, "model": "tiny-gpt2"}
        body = {"prompt": "Once upon a time", "max_new_tokens": 8}
        event = http_api_event("POST", "/generate_stream", body=body, function_url=True)
        streamed = api.invoke_and_wait(event)
        assert streamed.streamed and streamed.prelude()["statusCode"] == 200
        lines = [line for line in streamed.payload().decode().splitlines() if line.startswith("data:")]
        events = [json.loads(line[len("data:") :]) for line in lines]
        assert len(events) == events[-1]["details"]["generated_tokens"]
        assert api.invoke_and_wait(scheduled_event()).result()["cold_start"] is False  # the model loaded once
        buffered = api.invoke_and_wait(http_api_event("POST", "/generate", body=body))
        assert not buffered.streamed and buffered.result()["statusCode"] == 200
        # Greedy: the buffered answer is the streamed one.
        answer = json.loads(buffered.result()["body"])
        assert answer["generated_sequences"] == [events[-1]["generated_text"]]
        assert answer["usage"]["completion_tokens"] == len(events)


def test_a_failed_init_is_reported_to_init_error(tmp_path: Path) -> None:
    with runtime_process(tmp_path / "no-model-here", tmp_path / "runtime.log") as (api, process):
        assert api.init_failed.wait(120), (tmp_path / "runtime.log").read_text()[-2000:]
        assert process.wait(timeout=30) == 1  # and the process exits, for Lambda to start a new one
    assert api.init_error is not None and api.init_error["errorType"] == api.init_error_type
    assert api.init_error["errorMessage"]
