"""Trying the Lambda handler without Docker: `python -m distilgpt2_api invoke EVENT` (`make invoke`), and a call
without a context."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from event_factory import http_api_event, response_json

REPO = Path(__file__).resolve().parents[2]


def test_a_call_without_a_context_is_served_as_a_local_invocation(lambda_handler: Any) -> None:
    response = lambda_handler(http_api_event("POST", "/generate", body={"prompt": "Hi", "max_new_tokens": 2}), None)
    assert response["statusCode"] == 200, response
    assert response_json(response)["usage"]["completion_tokens"] == 2
    assert response["headers"]["x-request-id"]


def _invoke(model_dir: Path, event: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODEL_DIR": str(model_dir)}
    command = [sys.executable, "-m", "distilgpt2_api", "invoke", str(event)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)


def test_invoke_prints_the_handlers_result_for_a_shipped_event(model_dir: Path) -> None:
    done = _invoke(model_dir, REPO / "events" / "post-completions.json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # the result alone: logs and metrics went to stderr
    assert result["statusCode"] == 200
    assert result["body"]["model"] == "tiny-gpt2" and result["body"]["choices"][0]["text"]
    assert '"message":"request"' in done.stderr.replace(" ", "")


def test_invoke_names_a_missing_event_file(model_dir: Path, tmp_path: Path) -> None:
    done = _invoke(model_dir, tmp_path / "nope.json")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "nope.json" in done.stderr
