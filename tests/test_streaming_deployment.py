"""Token streaming's deployment: template.yaml's StreamingMode and the image's entry point, without Docker or AWS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from runtime_api_standin import runtime_api_standin
from test_deployment import (  # noqa: F401 - fixtures: image_packages (and what it uses), sam_tools
    _TRANSFORM,
    DOCKERFILE,
    FUNCTION,
    REPO,
    SAM_ENV,
    build_task_root,
    ctranslate2_image_packages,
    definition_routes,
    image_packages,
    lambda_routes,
    llamacpp_image_packages,
    load_template,
    parse_dockerfile,
    sam_tools,
    transformed_resources,
)

from event_factory import http_api_event, rest_api_event, scheduled_event

STREAM_API = "StreamRestApi"
STREAM_URI = "/2021-11-15/functions/${ApiFunction.Arn}/response-streaming-invocations"


def stream_api_operations(template: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    paths = template["Resources"][STREAM_API]["Properties"]["DefinitionBody"]["paths"]
    return {(method.upper(), path): op for path, methods in paths.items() for method, op in methods.items()}


def test_streaming_is_off_by_default() -> None:
    template = load_template()
    assert template["Parameters"]["StreamingMode"]["Default"] == "none"
    assert template["Parameters"]["StreamingMode"]["AllowedValues"] == ["none", "function-url", "rest-api", "both"]
    image = template["Resources"][FUNCTION]["Properties"]["ImageConfig"]["Fn::If"]
    assert image[0] == "Streaming" and image[2] == {"Ref": "AWS::NoValue"}  # off: the image's own entry point


def test_the_streaming_entry_point_runs_the_image_cmd_as_its_buffered_handler() -> None:
    streaming = load_template()["Resources"][FUNCTION]["Properties"]["ImageConfig"]["Fn::If"][1]
    python, flag, module = streaming["EntryPoint"]
    assert (python, flag) == ("/var/lang/bin/python3", "-m")  # the Lambda Python image's interpreter
    assert (REPO / "src" / Path(*module.split("."))).with_suffix(".py").is_file()
    assert streaming["Command"] == parse_dockerfile(DOCKERFILE.read_text()).cmd == ["handler.handler"]
    assert streaming["WorkingDirectory"] == "/var/task"


def test_the_streaming_rest_api_has_the_http_api_routes_each_streamed(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = load_template()
    operations = stream_api_operations(template)
    assert set(operations) == definition_routes(template) == lambda_routes(app, monkeypatch)
    for (method, path), op in operations.items():
        integration = op["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy" and integration["httpMethod"] == "POST"
        assert integration["responseTransferMode"] == "STREAM", f"{method} {path} does not stream"
        assert integration["uri"]["Fn::Sub"].endswith(STREAM_URI), f"{method} {path} is not InvokeWithResponseStream"
        assert op["security"] == {"Fn::If": ["IamAuth", [{"AWS_IAM": []}], {"Ref": "AWS::NoValue"}]}, path
        names = {p["name"] for p in op.get("parameters", [])}
        assert names == {part.strip("{}+") for part in path.split("/") if part.startswith("{")}, path


def test_the_function_url_streams() -> None:
    resources = load_template()["Resources"]
    url = resources["StreamFunctionUrl"]
    assert url["Condition"] == "StreamingUrl"
    assert url["Properties"]["InvokeMode"] == "RESPONSE_STREAM"
    assert url["Properties"]["AuthType"] == {"Ref": "AuthType"}  # AWS_IAM: callers sign, as on the HTTP API
    public = [r for r in resources.values() if r.get("Condition") == "PublicStreamingUrl"]
    assert {r["Properties"]["Action"] for r in public} == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}


@pytest.mark.parametrize("auth_type", ["NONE", "AWS_IAM"])
def test_streaming_resources_transform(sam_tools: Path, auth_type: str) -> None:  # noqa: F811
    resources = transformed_resources(sam_tools, {"AuthType": auth_type, "StreamingMode": "both"})
    kinds = {name: (r["Type"], r.get("Condition")) for name, r in resources.items()}
    assert kinds["StreamRestApi"] == ("AWS::ApiGateway::RestApi", "StreamingRestApi")
    assert kinds["StreamRestApiStage"] == ("AWS::ApiGateway::Stage", "StreamingRestApi")
    assert kinds["StreamFunctionUrl"] == ("AWS::Lambda::Url", "StreamingUrl")
    body = resources["StreamRestApi"]["Properties"]["Body"]
    streamed = [
        op["x-amazon-apigateway-integration"]["responseTransferMode"]
        for m in body["paths"].values()
        for op in m.values()
    ]
    assert streamed and set(streamed) == {"STREAM"}


# --- the image's files, serving streams ---------------------------------------------------


@pytest.mark.slow
def test_image_contents_stream(image_packages: Path, model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """Only what Dockerfile.lambda copies, run with the template's streaming entry point, streams and buffers."""
    recipe = parse_dockerfile(DOCKERFILE.read_text())
    task_root = build_task_root(recipe, tmp_path / "task")
    bare = tmp_path / "bare-python"  # the base interpreter and stdlib, none of the app venv's packages
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    baked = shutil.copytree(model_dir, tmp_path / "opt-model", ignore=shutil.ignore_patterns("*.safetensors"))

    image = load_template()["Resources"][FUNCTION]["Properties"]["ImageConfig"]["Fn::If"][1]
    command = [str(bare / "bin" / "python"), *image["EntryPoint"][1:], *image["Command"]]
    env = {**recipe.env, "MODEL_DIR": str(baked), "SERVED_MODEL_NAME": "distilgpt2", "PYTHONNOUSERSITE": "1"}
    env |= {key: str(tmp_path / "cache" / key) for key, value in recipe.env.items() if value.startswith("/tmp/")}
    env |= {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(image_packages), "LAMBDA_TASK_ROOT": str(task_root)}
    body = {"prompt": "Once upon a time", "max_new_tokens": 6}
    with runtime_api_standin() as api, (tmp_path / "runtime.log").open("wb") as log:
        env["AWS_LAMBDA_RUNTIME_API"] = api.address
        # The working directory is the task root, as ImageConfig sets it: `-m` imports from there.
        process = subprocess.Popen(command, cwd=task_root, env=env, stdout=log, stderr=log)
        try:
            warm = api.invoke_and_wait(scheduled_event(), timeout=300)
            assert warm.result()["warmed"] is True, (tmp_path / "runtime.log").read_text()[-3000:]
            for event in [
                http_api_event("POST", "/generate_stream", body=body, function_url=True),
                rest_api_event("POST", "/generate_stream", stage="stream", body=body),
            ]:
                call = api.invoke_and_wait(event)
                assert call.streamed and call.prelude()["statusCode"] == 200
                assert (
                    call.payload().count(b"data:")
                    == json.loads(call.payload().split(b"data:")[-1])["details"]["generated_tokens"]
                )
            buffered = api.invoke_and_wait(http_api_event("POST", "/generate", body=body))
            assert buffered.result()["statusCode"] == 200
        finally:
            process.kill()
            process.wait(timeout=30)
    modules = (tmp_path / "runtime.log").read_text()
    assert "Traceback" not in modules, modules[-3000:]
