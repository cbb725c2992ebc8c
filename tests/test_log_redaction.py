"""Prompts stay out of the server's output unless LOG_PROMPTS=true, however uvicorn is started."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from server_process import server_process

MARKER = "Zebracorn7Secret"  # a prompt nobody else would write

COMMANDS = {
    "make serve": ["-m", "distilgpt2_api", "serve", "--port", "{port}"],
    "uvicorn CLI": ["-m", "uvicorn", "distilgpt2_api.app:app", "--port", "{port}"],  # access log on by default
}


def _send_prompts(base_url: str) -> None:
    assert httpx.get(f"{base_url}/{MARKER}%20path?max_new_tokens=2", timeout=30).status_code == 200
    body = {"prompt": f"{MARKER} body", "max_new_tokens": 2}
    assert httpx.post(f"{base_url}/generate", json=body, timeout=30).status_code == 200
    too_long = {"prompt": f"{MARKER} invalid", "max_new_tokens": 0}
    assert httpx.post(f"{base_url}/generate", json=too_long, timeout=30).status_code == 422


def _request_logs(output: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("message") == "request"]


@pytest.mark.parametrize("command", COMMANDS)
def test_prompts_never_reach_the_logs(model_dir: Path, tmp_path: Path, command: str) -> None:
    env = {"MODEL_DIR": str(model_dir), "LOG_PROMPTS": "false"}
    with server_process(COMMANDS[command], env, tmp_path / "server.log") as server:
        _send_prompts(server.base_url)
    output = server.output()
    assert MARKER not in output
    routes = {(line["method"], line["route"], line["status"]) for line in _request_logs(output)}
    assert {("GET", "/{prompt}", 200), ("POST", "/generate", 200), ("POST", "/generate", 422)} <= routes


def test_log_prompts_true_logs_them(model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(model_dir), "LOG_PROMPTS": "true"}
    with server_process(COMMANDS["make serve"], env, tmp_path / "server.log") as server:
        _send_prompts(server.base_url)
    prompts = {line.get("prompt") for line in _request_logs(server.output())}
    assert {f"{MARKER} path", f"{MARKER} body"} <= prompts
