"""Deployment files (template.yaml, Dockerfile.lambda, events/), checked without Docker or AWS."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI

from distilgpt2_api.http_api.app_factory import create_app
from distilgpt2_api.settings import Settings

from route_table import app_routes

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template.yaml"
DOCKERFILE = REPO / "Dockerfile.lambda"
EVENT_FILES = sorted((REPO / "events").glob("*.json"))
FUNCTION = "ApiFunction"
NO_VALUE = {"Ref": "AWS::NoValue"}
API = "HttpApi"
# SAM CLI needs a region to validate, never credentials or network.
SAM_ENV = {"SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}


# --- template.yaml --------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    """YAML loader that keeps CloudFormation short tags (!Ref, !Sub, ...) as their long form."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template() -> dict[str, Any]:
    template: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)  # a SafeLoader subclass
    return template


def event_routes(template: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of every HttpApi event on the function."""
    events = template["Resources"][FUNCTION]["Properties"]["Events"]
    return {
        (e["Properties"]["Method"].upper(), e["Properties"]["Path"]) for e in events.values() if e["Type"] == "HttpApi"
    }


def definition_routes(template: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) declared in the HttpApi's DefinitionBody (where each route's auth lives)."""
    paths = template["Resources"][API]["Properties"]["DefinitionBody"]["paths"]
    return {(method.upper(), path) for path, methods in paths.items() for method in methods}


@pytest.fixture(scope="module")
def sam_tools() -> Path:
    bin_dir = Path(os.environ.get("SAM_TOOLS_BIN", REPO / ".venv-sam" / "bin"))
    if not bin_dir.is_dir():
        pytest.skip(f"SAM CLI / cfn-lint not installed: {bin_dir} does not exist (run `make sam-tools`)")
    return bin_dir


@pytest.mark.parametrize(
    "command",
    [
        ["sam", "validate", "--template", "template.yaml", "--region", "us-east-1"],
        ["sam", "validate", "--lint", "--template", "template.yaml", "--region", "us-east-1"],
        ["cfn-lint", "template.yaml"],
    ],
    ids=["sam-validate", "sam-validate-lint", "cfn-lint"],
)
def test_template_validates(sam_tools: Path, command: list[str]) -> None:
    result = subprocess.run(
        [str(sam_tools / command[0]), *command[1:]],
        cwd=REPO,
        env={**os.environ, **SAM_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"^[EW]\d{4}", result.stdout, flags=re.M), result.stdout  # no errors, no warnings


# What the SAM transform makes of the template, for one set of parameter values.
_TRANSFORM = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:
    def load(self): return {}

template = yaml_parse(open("template.yaml").read())
template["Resources"]["ApiFunction"]["Properties"]["ImageUri"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1"
print(json.dumps(transform(template, json.loads(sys.argv[1]), NoManagedPolicies())))
"""


def transformed_resources(sam_tools: Path, params: dict[str, str]) -> dict[str, Any]:
    """The template's resources after SAM's transform, with these parameter values (offline)."""
    result = subprocess.run(
        [str(sam_tools / "python"), "-c", _TRANSFORM, json.dumps(params)],
        cwd=REPO,
        env={**os.environ, **SAM_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    resources: dict[str, Any] = json.loads(result.stdout)["Resources"]
    return resources


@pytest.mark.parametrize("auth_type", ["NONE", "AWS_IAM"])
def test_every_route_has_an_integration_and_auth(sam_tools: Path, auth_type: str) -> None:
    # Events and DefinitionBody both list the routes: a route only in the events would
    # be public even with AuthType=AWS_IAM. Check what the transform actually emits.
    params = {"AuthType": auth_type, "CorsAllowedOrigins": "https://a.example,https://b.example"}
    body = transformed_resources(sam_tools, params)[API]["Properties"]["Body"]
    operations = [(path, method, op) for path, methods in body["paths"].items() for method, op in methods.items()]
    assert len(operations) == len(event_routes(load_template()))
    for path, method, op in operations:
        assert "x-amazon-apigateway-integration" in op, f"{method.upper()} {path} has no Lambda integration"
        assert op.get("security") == {"Fn::If": ["IamAuth", [{"AWS_IAM": []}], {"Ref": "AWS::NoValue"}]}, path
    cors = body["x-amazon-apigateway-cors"]["Fn::If"][1]
    assert cors["allowOrigins"] == {"Fn::Split": [",", params["CorsAllowedOrigins"]]}


def lambda_routes(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, str]]:
    """The routes of the app as Lambda builds it: no /metrics (EMF instead)."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
    return app_routes(create_app(app.state.scheduler, Settings(model_dir=Path("unused"))))


def test_template_routes_match_app_routes(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    template = load_template()
    served, routed, declared = lambda_routes(app, monkeypatch), event_routes(template), definition_routes(template)
    assert not served - routed, f"app routes without an HttpApi event in template.yaml: {sorted(served - routed)}"
    assert not routed - served, f"template routes the app does not serve: {sorted(routed - served)}"
    assert declared == routed, f"DefinitionBody and Events differ: {sorted(declared ^ routed)}"


def test_template_environment_and_defaults() -> None:
    template = load_template()
    parameters = template["Parameters"]
    variables = template["Resources"][FUNCTION]["Properties"]["Environment"]["Variables"]
    assert variables["MODEL_DIR"] == "/opt/model"
    assert variables["HF_HUB_OFFLINE"] == "1"
    # Every variable the function sets is one the service reads: a misspelt or stale name would be silently ignored.
    read_by_the_service = {name.upper() for name in Settings.model_fields} | {"HF_HUB_OFFLINE"}
    assert set(variables) <= read_by_the_service, sorted(set(variables) - read_by_the_service)
    assert "THREADS" not in variables  # one thread, the service default, measured fastest (docs/PERFORMANCE.md)
    for variable, parameter, default in [
        ("MAX_NEW_TOKENS_LIMIT", "MaxNewTokensLimit", 512),
        ("MAX_RETURN_SEQUENCES", "MaxReturnSequences", 8),
        ("MAX_PROMPT_CHARS", "MaxPromptChars", 8000),
        ("MAX_BATCH_TOKENS", "MaxBatchTokens", 3072),
    ]:
        assert variables[variable] == {"Ref": parameter}
        assert parameters[parameter]["Default"] == default
    assert parameters["MemorySize"]["Default"] == 1769
    assert parameters["Timeout"]["Default"] == 60
    assert parameters["AuthType"]["Default"] == "NONE"
    assert parameters["CorsAllowedOrigins"]["Default"] == ""  # closed unless configured
    assert parameters["ApiKeyParameter"]["Default"] == ""  # no key unless configured
    assert variables["API_KEY_PARAMETER"] == {"Fn::If": ["HasApiKeyParameter", {"Ref": "ApiKeyParameter"}, NO_VALUE]}
    (policy,) = template["Resources"][FUNCTION]["Properties"]["Policies"]
    condition, (statement,), absent = policy["Fn::If"][0], policy["Fn::If"][1]["Statement"], policy["Fn::If"][2]
    assert (condition, absent) == ("HasApiKeyParameter", NO_VALUE)  # read access only when a key is configured
    assert statement["Action"]["Fn::If"][1:] == ["secretsmanager:GetSecretValue", "ssm:GetParameter"]
    assert template["Resources"][FUNCTION]["Metadata"]["Dockerfile"] == DOCKERFILE.name


# --- events/ --------------------------------------------------------------------------


def test_events_cover_every_route() -> None:
    routed = {f"{method} {path}" for method, path in event_routes(load_template())}
    used = {json.loads(f.read_text()).get("routeKey") for f in EVENT_FILES}
    # The sample events cover the API's own routes; the docs pages need no sample.
    assert {"GET /", "GET /{prompt}", "POST /generate", "POST /v1/completions"} <= used
    assert used - {None} <= routed


@pytest.mark.parametrize("event_file", EVENT_FILES, ids=lambda p: p.name)
def test_event_through_lambda_handler(event_file: Path, app: FastAPI, lambda_handler: Any, lambda_context: Any) -> None:
    event = json.loads(event_file.read_text())
    if "requestContext" not in event:  # warm-up: a schedule or {"warmup": true}
        assert lambda_handler(event, lambda_context)["warmed"] is True
        return
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200, response.get("body")
    json.loads(response["body"])


# --- Dockerfile.lambda ------------------------------------------------------------------


@dataclass
class ImageRecipe:
    """What the final stage of Dockerfile.lambda puts into the image."""

    requirements: str  # the builder's `pip install -r` file
    packages_dir: str  # the builder's `pip install --target` directory
    local_copies: list[tuple[str, str]] = field(default_factory=list)  # (context path, image path)
    builder_copies: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)


def parse_dockerfile(text: str) -> ImageRecipe:
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instructions = [line.strip().split(None, 1) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    stage_starts = [i for i, (op, *_) in enumerate(instructions) if op.upper() == "FROM"]
    builder, final = instructions[: stage_starts[-1]], instructions[stage_starts[-1] + 1 :]

    installs = [shlex.split(rest) for op, rest in builder if op.upper() == "RUN" and "pip install" in rest]
    pip = next(words for words in installs if "--target" in words)
    recipe = ImageRecipe(requirements=pip[pip.index("-r") + 1], packages_dir=pip[pip.index("--target") + 1])
    for op, rest in final:
        words = shlex.split(rest)
        if op.upper() == "COPY":
            flags = [w for w in words if w.startswith("--")]
            *sources, dest = [w for w in words if not w.startswith("--")]
            copies = recipe.builder_copies if any(f.startswith("--from=") for f in flags) else recipe.local_copies
            copies.extend((source, dest) for source in sources)
        elif op.upper() == "ENV":
            recipe.env.update(w.split("=", 1) for w in words)  # type: ignore[arg-type]
        elif op.upper() == "CMD":
            recipe.cmd = json.loads(rest)
    return recipe


def test_dockerfile_recipe() -> None:
    recipe = parse_dockerfile(DOCKERFILE.read_text())
    assert recipe.cmd == ["handler.handler"]
    assert recipe.env["MODEL_DIR"] == "/opt/model"
    assert recipe.env["HF_HUB_OFFLINE"] == "1"
    assert all(value.startswith("/tmp/") for key, value in recipe.env.items() if key.endswith(("_HOME", "CACHE")))
    assert {source for source, _ in recipe.builder_copies} == {recipe.packages_dir, "/opt/model"}
    assert "--index-url https://download.pytorch.org/whl/cpu torch==" in DOCKERFILE.read_text()
    assert recipe.env["ENGINE"] == "ctranslate2"
    assert "torch==" not in (REPO / recipe.requirements).read_text()
    for source, _ in recipe.local_copies:
        assert (REPO / source).exists(), f"Dockerfile.lambda copies {source}, which is missing"


@pytest.mark.slow
@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_every_requirement_has_a_wheel_for_the_image(machine: str, tmp_path: Path) -> None:
    """The Lambda Python 3.12 image (Amazon Linux 2023, glibc 2.34) can install requirements.txt."""
    recipe = parse_dockerfile(DOCKERFILE.read_text())
    assert all("lambda/python:3.12" in line for line in DOCKERFILE.read_text().splitlines() if "lambda/python" in line)
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in (34, 28, 17)] + [f"manylinux2014_{machine}"]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:"]
        + [arg for platform in platforms for arg in ("--platform", platform)]
        + ["--python-version", "3.12", "--implementation", "cp", "--dest", str(tmp_path)]
        + ["-r", str(REPO / recipe.requirements)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def _install_key(recipe: ImageRecipe) -> str:
    digest = hashlib.sha256((REPO / recipe.requirements).read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def image_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """requirements.txt installed with `pip install --target`, as the image's builder does.

    Kept next to pytest's numbered temp dirs (not in the repo) and reused while
    requirements.txt and the Python version are unchanged: torch takes a while.
    """
    recipe = parse_dockerfile(DOCKERFILE.read_text())
    target = tmp_path_factory.getbasetemp().parent / f"lambda-packages-{_install_key(recipe)}"
    if not (target / ".complete").exists():
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")  # concurrent sessions don't collide
        shutil.rmtree(partial, ignore_errors=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            + ["--only-binary=:all:", "--target", str(partial), "-r", str(REPO / recipe.requirements)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        (partial / ".complete").touch()  # before the rename: a `target` that exists is complete
        try:
            partial.rename(target)
        except OSError:  # another session finished first
            shutil.rmtree(partial, ignore_errors=True)
    return target


# Runs in the bare interpreter: invokes the handler with each event, and lists any
# module imported from outside the image's directories (stdlib aside).
_INVOKE = """
import json, os, sys, sysconfig

class Context:
    aws_request_id = "11111111-2222-3333-4444-555555555555"
    function_name = "distilgpt2-api"
    memory_limit_in_mb = 3008
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:distilgpt2-api"
    def get_remaining_time_in_millis(self): return 60000

module_name, function_name = sys.argv[1].rsplit(".", 1)
entry = getattr(__import__(module_name), function_name)
results = [entry(json.loads(event), Context()) for event in sys.argv[3:]]
allowed = tuple(sys.argv[2].split(":")) + (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
outside = sorted(
    f for f in (getattr(m, "__file__", None) for m in list(sys.modules.values()))
    # torch names some generated modules with bare relative "files": not imports from disk.
    if f and os.path.isabs(f) and (not f.startswith(allowed) or "site-packages" in f)
)
print(json.dumps({"results": results, "outside": outside}))
"""


@pytest.mark.slow
def test_image_contents_serve_every_event(image_packages: Path, model_dir: Path, tmp_path: Path) -> None:
    """Only what Dockerfile.lambda copies into the image is importable, and it serves."""
    recipe = parse_dockerfile(DOCKERFILE.read_text())
    task_root = tmp_path / "task"
    for source, dest in recipe.local_copies:
        target = task_root / Path(dest.replace("${LAMBDA_TASK_ROOT}", "").lstrip("/"))
        if dest.endswith("/"):
            target = target / Path(source).name
        copy = shutil.copytree if (REPO / source).is_dir() else shutil.copy2
        target.parent.mkdir(parents=True, exist_ok=True)
        copy(REPO / source, target)
    # A venv without pip: the base interpreter and stdlib, none of the app venv's packages.
    bare = tmp_path / "bare-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)

    # The tiny model stands in for the baked one: as in the image, without its fp32 weights.
    baked = shutil.copytree(model_dir, tmp_path / "opt-model", ignore=shutil.ignore_patterns("*.safetensors"))
    env = {**recipe.env, "MODEL_DIR": str(baked), "SERVED_MODEL_NAME": "distilgpt2"}
    env |= {key: str(tmp_path / "cache" / key) for key, value in recipe.env.items() if value.startswith("/tmp/")}
    # In the image, app files and packages share the task root; the app's copies win.
    search_path = f"{task_root}:{image_packages}"
    env |= {"PATH": "/usr/bin:/bin", "PYTHONPATH": search_path, "LAMBDA_TASK_ROOT": str(task_root)}
    events = [f.read_text() for f in EVENT_FILES]
    result = subprocess.run(
        [str(bare / "bin" / "python"), "-s", "-c", _INVOKE, recipe.cmd[0], search_path, *events],
        cwd=task_root,  # as on Lambda; `-c` puts the working directory on sys.path
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["outside"] == [], "imported from outside the image tree"
    for event_file, response in zip(EVENT_FILES, report["results"], strict=True):
        if "statusCode" in response:
            assert response["statusCode"] == 200, (event_file.name, response.get("body"))
        else:
            assert response["warmed"] is True, event_file.name


# --- Makefile -----------------------------------------------------------------------------


def test_make_help_lists_every_target() -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY: (.*)$", makefile, flags=re.M).group(1).split())  # type: ignore[union-attr]
    result = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines()}
    assert listed == phony
    assert all(len(line.split(None, 1)) == 2 for line in result.stdout.splitlines())  # one line of text each
