"""Deployment files (template.yaml, Dockerfile.lambda, events/), checked without Docker or AWS."""

from __future__ import annotations

import hashlib
import importlib
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
from distilgpt2_api.model_store import MANIFEST_NAME, engine_files, is_prepared, read_manifest
from distilgpt2_api.model_store.llamacpp_gguf import PACKAGE_VERSION as LLAMACPP_VERSION
from distilgpt2_api.settings import Settings

from route_table import app_routes

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template.yaml"
DOCKERFILE = REPO / "Dockerfile.lambda"
EVENT_FILES = sorted((REPO / "events").glob("*.json"))
EMBEDDINGS_EVENT = "post-embeddings.json"
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
    assert "THREADS" not in variables  # the default follows the vCPU share of the memory setting (engines/cpus.py)
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
    assert {"GET /", "GET /{prompt}", "POST /generate", "POST /v1/completions", *CHAT_ROUTES} <= used
    assert used - {None} <= routed


# Routes that need a model with a chat template (the tiny GPT-2 has none: a 400 there).
CHAT_ROUTES = {"POST /v1/responses", "POST /v1/messages", "POST /v1/messages/count_tokens"}


def served_events() -> list[Path]:
    """The events an image of a model without a chat template (distilgpt2, the default) answers with a 200."""
    return [f for f in EVENT_FILES if json.loads(f.read_text()).get("routeKey") not in CHAT_ROUTES]


@pytest.mark.parametrize("event_file", EVENT_FILES, ids=lambda p: p.name)
def test_event_through_lambda_handler(
    event_file: Path,
    app: FastAPI,
    lambda_handler: Any,
    lambda_context: Any,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = json.loads(event_file.read_text())
    if "requestContext" not in event:  # warm-up: a schedule or {"warmup": true}
        assert lambda_handler(event, lambda_context)["warmed"] is True
        return
    if event["routeKey"] in CHAT_ROUTES:  # the same handler, around the app of the tiny chat model
        handler_module = importlib.import_module("distilgpt2_api.aws_lambda.handler")
        monkeypatch.setattr(handler_module.asgi_handler, "app", request.getfixturevalue("chat_app"))
    response = lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200, response.get("body")
    json.loads(response["body"])


# --- Dockerfile.lambda ------------------------------------------------------------------

ENGINES = ["ctranslate2", "llamacpp"]  # what the image can serve: template.yaml's Engine values
CMAKE_ARGS_MAKE = re.compile(r"^(LLAMA_CPP_CMAKE_ARGS_\w+) := (.*)$", re.M)
# Nothing that builds belongs in the image's file set, nor torch (prepare time only).
BUILD_TOOLS = {"cmake", "ninja", "gcc", "g++", "cc", "c++", "ld", "make"}
BUILD_PACKAGES = ("torch", "cmake", "ninja", "scikit_build_core", "setuptools_scm", "transformers")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]  # (OP, rest), its build arguments expanded


def dockerfile_stages(text: str, build_args: dict[str, str] | None = None) -> list[Stage]:
    """Every stage, with ARG values (global defaults, the stage's own, then `build_args`) expanded as Docker does."""
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instructions = [line.strip().split(None, 1) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    given = build_args or {}

    def expand(value: str, scope: dict[str, str]) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: scope.get(m.group(1), m.group(0)), value)

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    scope: dict[str, str] = {}
    for op, rest in instructions:
        op = op.upper()
        if op == "ARG":
            name, _, default = rest.partition("=")
            if not stages:
                global_args[name] = given.get(name, default)
            else:
                scope[name] = given.get(name, default or global_args.get(name, ""))
        elif op == "FROM":
            words = expand(rest, global_args).split()
            name = words[words.index("AS") + 1] if "AS" in words else ""
            stages.append(Stage(name=name, base=words[0], instructions=[]))
            scope = {}
        else:
            stages[-1].instructions.append((op, expand(rest, scope)))
    return stages


def stage_chain(stages: list[Stage], name: str) -> list[Stage]:
    """The named stage and the stages it is built FROM, base first."""
    by_name = {stage.name: stage for stage in stages if stage.name}
    chain = [by_name[name]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def runs(chain: list[Stage]) -> list[str]:
    return [rest for stage in chain for op, rest in stage.instructions if op == "RUN"]


@dataclass
class ImageRecipe:
    """What the final stage of Dockerfile.lambda puts into the image, for one ENGINE."""

    engine: str
    requirements: str  # the packages stage's `pip install -r` file
    packages_dir: str  # its `pip install --target` directory
    pip_args: list[str]  # the whole `pip install` command line, from `install` on
    packages_removed: list[str] = field(default_factory=list)  # paths under packages_dir deleted after the install
    wheel_stage: Stage | None = None  # the stage whose wheels the packages stage installs (--find-links)
    model_trim: str = ""  # the model stage's command that keeps only the files ENGINE reads
    local_copies: list[tuple[str, str]] = field(default_factory=list)  # (context path, image path)
    builder_copies: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)


def default_engine(text: str) -> str:
    match = re.search(r"^ARG ENGINE=(\S+)$", text, flags=re.M)
    assert match, "Dockerfile.lambda declares no ARG ENGINE with a default"
    return match.group(1)


def parse_dockerfile(text: str, engine: str | None = None) -> ImageRecipe:
    engine = engine or default_engine(text)
    stages = dockerfile_stages(text, {"ENGINE": engine})
    final = stages[-1]
    packages = stage_chain(stages, "packages")
    installs = [shlex.split(rest) for rest in runs(packages) if "pip install" in rest]
    (pip,) = [words for words in installs if "--target" in words]
    packages_dir = pip[pip.index("--target") + 1]
    recipe = ImageRecipe(
        engine=engine,
        requirements=pip[pip.index("-r") + 1],
        packages_dir=packages_dir,
        pip_args=pip[pip.index("install") :],
        stages=stages,
    )
    for rest in runs(packages):
        words = shlex.split(rest)
        if words[:2] == ["rm", "-rf"]:
            recipe.packages_removed += [
                w[len(packages_dir) + 1 :] for w in words[2:] if w.startswith(packages_dir + "/")
            ]
    if "--find-links" in pip:
        wheel_dir = pip[pip.index("--find-links") + 1]
        (source,) = [
            rest.split()[0].removeprefix("--from=")
            for stage in packages
            for op, rest in stage.instructions
            if op == "COPY" and rest.startswith("--from=") and rest.split()[-1] == wheel_dir
        ]
        recipe.wheel_stage = stage_chain(stages, source)[-1]
    (recipe.model_trim,) = [
        rest for rest in runs(stage_chain(stages, "model")) if "case " in rest and "/opt/model" in rest
    ]
    for op, rest in final.instructions:
        words = shlex.split(rest)
        if op == "COPY":
            flags = [w for w in words if w.startswith("--")]
            *sources, dest = [w for w in words if not w.startswith("--")]
            copies = recipe.builder_copies if any(f.startswith("--from=") for f in flags) else recipe.local_copies
            copies.extend((source, dest) for source in sources)
        elif op == "ENV":
            recipe.env.update(w.split("=", 1) for w in words)  # type: ignore[arg-type]
        elif op == "CMD":
            recipe.cmd = json.loads(rest)
    return recipe


def requirement_lines(path: Path) -> list[str]:
    """The requirements a file pins, following its `-r` includes."""
    lines: list[str] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            lines += requirement_lines(path.parent / line[3:].strip())
        elif line:
            lines.append(line)
    return lines


def test_image_engine_is_a_build_argument() -> None:
    text = DOCKERFILE.read_text()
    template = load_template()
    parameter = template["Parameters"]["Engine"]
    assert parameter["AllowedValues"] == ENGINES
    assert parameter["Default"] == default_engine(text) == Settings.model_fields["engine"].default
    assert template["Resources"][FUNCTION]["Metadata"]["DockerBuildArgs"]["ENGINE"] == {"Ref": "Engine"}
    # The image sets ENGINE itself: a function variable could name an engine the image does not hold.
    assert "ENGINE" not in template["Resources"][FUNCTION]["Properties"]["Environment"]["Variables"]


@pytest.mark.parametrize("engine", ENGINES)
def test_dockerfile_recipe(engine: str) -> None:
    text = DOCKERFILE.read_text()
    recipe = parse_dockerfile(text, engine)
    assert recipe.cmd == ["handler.handler"]
    assert recipe.env["MODEL_DIR"] == "/opt/model"
    assert recipe.env["HF_HUB_OFFLINE"] == "1"
    assert recipe.env["ENGINE"] == engine
    assert all(value.startswith("/tmp/") for key, value in recipe.env.items() if key.endswith(("_HOME", "CACHE")))
    assert {source for source, _ in recipe.builder_copies} == {recipe.packages_dir, "/opt/model"}
    assert "--index-url https://download.pytorch.org/whl/cpu torch==" in text
    assert "--only-binary=:all:" in recipe.pip_args
    pins = {
        re.split(r"[=<>!~ ]", line, maxsplit=1)[0].lower() for line in requirement_lines(REPO / recipe.requirements)
    }
    assert not pins & {"torch", "transformers"}
    assert ("ctranslate2" in pins, "llama-cpp-python" in pins) == (engine == "ctranslate2", engine == "llamacpp")
    for source, _ in recipe.local_copies:
        assert (REPO / source).exists(), f"Dockerfile.lambda copies {source}, which is missing"
    # What the final image copies from is built on the Lambda image and installs no compiler there.
    lambda_base = "public.ecr.aws/lambda/python:3.12"
    assert recipe.stages[-1].base == lambda_base
    for stage in stage_chain(recipe.stages, "packages"):
        assert stage.base == lambda_base or stage.base.startswith("packages-")
    assert not any(re.search(r"\b(dnf|yum|microdnf)\b", rest) for rest in runs(stage_chain(recipe.stages, "packages")))
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    copied = [
        rest for stage in recipe.stages for op, rest in stage.instructions if op == "COPY" and "--from" not in rest
    ]
    for name in {word for rest in copied for word in rest.split()[:-1]}:
        assert f"!{name}" in dockerignore or f"!{name}/" in dockerignore, f".dockerignore leaves {name} out"


def test_llamacpp_wheel_is_built_as_make_install_builds_it() -> None:
    """The image builds the pinned binding with the Makefile's portable CMake arguments, in a stage of its own."""
    recipe = parse_dockerfile(DOCKERFILE.read_text(), "llamacpp")
    stage = recipe.wheel_stage
    assert stage is not None and stage.base == "public.ecr.aws/lambda/python:3.12"  # Lambda's own OS and glibc
    env = dict(shlex.split(rest)[0].split("=", 1) for op, rest in stage.instructions if op == "ENV")
    make_args = dict(CMAKE_ARGS_MAKE.findall((REPO / "Makefile").read_text()))
    # Per architecture (uname -m), the same in both; never the build machine's own CPU.
    assert set(make_args) == {"LLAMA_CPP_CMAKE_ARGS_x86_64", "LLAMA_CPP_CMAKE_ARGS_aarch64"}
    assert {name: env[name] for name in make_args} == make_args
    assert all("-DGGML_NATIVE=OFF" in args and "-DGGML_BACKEND_DL=ON" in args for args in make_args.values())
    assert '"$(uname -m)"' in stage_text(stage) and "${LLAMA_CPP_CMAKE_ARGS_aarch64}" in stage_text(stage)
    (build,) = [rest for rest in runs([stage]) if "llamacpp/build-wheel.sh" in rest]
    assert 'CMAKE_ARGS="${CMAKE_ARGS}"' in build and "COPY llamacpp ./llamacpp" in stage_text(stage)
    make_install = (REPO / "Makefile").read_text()
    assert 'CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" PYTHON=$(BIN)/python llamacpp/build-wheel.sh' in make_install
    script = (REPO / "llamacpp" / "build-wheel.sh").read_text()  # the pin, the patches, no dependencies
    assert "grep '^llama-cpp-python==' \"$here/../requirements-llamacpp.txt\"" in script
    assert 'for patch_file in "$here"/*.patch' in script and "pip wheel --quiet --no-deps" in script
    pins = [line for line in requirement_lines(REPO / "requirements-llamacpp.txt") if line.startswith("llama-cpp-")]
    assert pins == [f"llama-cpp-python=={LLAMACPP_VERSION}"]
    assert any(re.search(r"\bdnf install -y .*gcc-c\+\+.*cmake.* patch\b", rest) for rest in runs([stage]))
    # Not in the ctranslate2 image: its packages never come from that stage.
    assert parse_dockerfile(DOCKERFILE.read_text(), "ctranslate2").wheel_stage is None


def stage_text(stage: Stage) -> str:
    return "\n".join(f"{op} {rest}" for op, rest in stage.instructions)


def bake_model(recipe: ImageRecipe, model_dir: Path, target: Path) -> Path:
    """`model_dir` as the model stage leaves /opt/model for this engine: its own trimming command, run here."""
    baked = shutil.copytree(model_dir, target)
    command = recipe.model_trim.replace("/opt/model", shlex.quote(str(baked)))
    subprocess.run(["sh", "-ec", command], check=True, env={"PATH": "/usr/bin:/bin", "ENGINE": recipe.engine})
    return baked


@pytest.mark.parametrize("engine", ENGINES)
def test_the_llamacpp_model_stage_runs_the_gguf_gate(engine: str) -> None:
    """prepare-model gates the GGUF only with the binding (`can_quantize`): the llamacpp image's model stage installs
    the wheel the image serves with, so model.gguf is the gate's choice; the ctranslate2 image never builds it."""
    recipe = parse_dockerfile(DOCKERFILE.read_text(), engine)
    chain = [stage.name for stage in stage_chain(recipe.stages, "model")]
    prepare_at = next(i for i, rest in enumerate(runs(stage_chain(recipe.stages, "model"))) if "prepare-model" in rest)
    installs_wheel = [
        i
        for i, rest in enumerate(runs(stage_chain(recipe.stages, "model")))
        if re.search(r"pip install .*/wheels/", rest)
    ]
    if engine == "llamacpp":
        assert recipe.wheel_stage is not None and recipe.wheel_stage.name in chain
        assert installs_wheel and installs_wheel[0] < prepare_at
    else:
        assert "llamacpp-wheel" not in chain and not installs_wheel


@pytest.mark.parametrize("engine", ENGINES)
def test_model_stage_keeps_the_files_the_engine_reads(engine: str, model_dir: Path, tmp_path: Path) -> None:
    recipe = parse_dockerfile(DOCKERFILE.read_text(), engine)
    baked = bake_model(recipe, model_dir, tmp_path / "opt-model")
    manifest = read_manifest(baked)
    assert manifest is not None
    left = {str(p.relative_to(baked)) for p in baked.rglob("*") if p.is_file()}
    assert left == set(engine_files(manifest, engine)) | {MANIFEST_NAME}
    assert is_prepared(baked, engine=engine)


@pytest.mark.slow
@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
@pytest.mark.parametrize("engine", ENGINES)
def test_every_requirement_has_a_wheel_for_the_image(engine: str, machine: str, tmp_path: Path) -> None:
    """The Lambda Python 3.12 image (Amazon Linux 2023, glibc 2.34) can install the engine's requirements as wheels
    (llama-cpp-python aside: the image builds that one)."""
    recipe = parse_dockerfile(DOCKERFILE.read_text(), engine)
    assert all("lambda/python:3.12" in line for line in DOCKERFILE.read_text().splitlines() if "lambda/python" in line)
    wanted = tmp_path / "requirements.txt"
    wanted.write_text("\n".join(r for r in requirement_lines(REPO / recipe.requirements) if "llama-cpp" not in r))
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(34, 16, -1)] + [f"manylinux2014_{machine}"]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:"]
        + [arg for platform in platforms for arg in ("--platform", platform)]
        + ["--python-version", "3.12", "--implementation", "cp", "--dest", str(tmp_path / "wheels")]
        + ["-r", str(wanted)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def cached_llamacpp_wheel() -> Path:
    """The pinned llama-cpp-python wheel `make install` built with llamacpp/*.patch (`make llamacpp-wheel` prints it,
    building it first if it is not there): the image's build stage runs the same script with the same arguments."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "llamacpp-wheel"], cwd=REPO, capture_output=True, text=True, check=True
    )
    wheel = Path(result.stdout.strip().splitlines()[-1])
    assert wheel.name.startswith(f"llama_cpp_python-{LLAMACPP_VERSION}-") and wheel.is_file(), wheel
    return wheel


def _install_key(recipe: ImageRecipe, extra: bytes = b"") -> str:
    digest = hashlib.sha256(extra)
    for name in sorted({recipe.requirements, "requirements-common.txt"}):
        digest.update((REPO / name).read_bytes())
    digest.update(json.dumps([recipe.pip_args, recipe.packages_removed]).encode())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


def install_image_packages(base: Path, engine: str) -> Path:
    """The engine's requirements installed with `pip install --target`, as the image's packages stage does.

    Kept next to pytest's numbered temp dirs (not in the repo) and reused while the requirements, the install
    and the Python version are unchanged. For llamacpp, the wheel dir the image builds is one wheel from pip's cache.
    """
    recipe = parse_dockerfile(DOCKERFILE.read_text(), engine)
    wheel = cached_llamacpp_wheel() if recipe.wheel_stage else None
    key = _install_key(recipe, hashlib.sha256(wheel.read_bytes()).digest() if wheel else b"")
    target = base / f"lambda-packages-{engine}-{key}"
    if not (target / ".complete").exists():
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")  # concurrent sessions don't collide
        shutil.rmtree(partial, ignore_errors=True)
        args = list(recipe.pip_args)
        args[args.index("--target") + 1] = str(partial)
        args[args.index("-r") + 1] = str(REPO / recipe.requirements)
        args.remove("--no-cache-dir")
        if wheel:
            wheels = partial.with_name(f"{partial.name}-wheels")
            wheels.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, wheels / wheel.name)
            args[args.index("--find-links") + 1] = str(wheels)
        result = subprocess.run(
            [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if wheel:
            shutil.rmtree(wheels, ignore_errors=True)
        assert result.returncode == 0, result.stderr[-4000:]
        for removed in recipe.packages_removed:
            shutil.rmtree(partial / removed)  # what the packages stage deletes after its install
        (partial / ".complete").touch()  # before the rename: a `target` that exists is complete
        try:
            partial.rename(target)
        except OSError:  # another session finished first
            shutil.rmtree(partial, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def llamacpp_image_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_image_packages(tmp_path_factory.getbasetemp().parent, "llamacpp")


@pytest.fixture(scope="session")
def ctranslate2_image_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_image_packages(tmp_path_factory.getbasetemp().parent, "ctranslate2")


@pytest.fixture(scope="session")
def image_packages(request: pytest.FixtureRequest) -> Path:
    """The default image's packages (Dockerfile.lambda's ENGINE default)."""
    return engine_image_packages(request, default_engine(DOCKERFILE.read_text()))


def engine_image_packages(request: pytest.FixtureRequest, engine: str) -> Path:
    fixture = f"{engine}_image_packages"
    packages: Path = request.getfixturevalue(fixture)
    return packages


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
# The shared libraries this process mapped, by path.
libraries = sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line.rsplit("/", 1)[-1]})
print(json.dumps({"results": results, "outside": outside, "libraries": libraries}))
"""


def structured_event() -> dict[str, object]:
    """The shipped completions event asking for a JSON object (`response_format`)."""
    event = json.loads((REPO / "events" / "post-completions.json").read_text())
    body = json.loads(event["body"])
    event["body"] = json.dumps({**body, "max_tokens": 40, "response_format": {"type": "json_object"}})
    return event


def lambda_library_path(task_root: Path, packages: Path) -> str:
    """Lambda's LD_LIBRARY_PATH, the task root's parts where this test keeps them (app files and packages apart)."""
    return ":".join(
        ["/var/lang/lib", "/lib64", "/usr/lib64", str(task_root), f"{task_root}/lib", str(packages)]
        + [f"{packages}/lib", "/opt/lib"]
    )


def build_task_root(recipe: ImageRecipe, task_root: Path) -> Path:
    for source, dest in recipe.local_copies:
        target = task_root / Path(dest.replace("${LAMBDA_TASK_ROOT}", "").lstrip("/"))
        if dest.endswith("/"):
            target = target / Path(source).name
        copy = shutil.copytree if (REPO / source).is_dir() else shutil.copy2
        target.parent.mkdir(parents=True, exist_ok=True)
        copy(REPO / source, target)
    return task_root


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_image_contents_serve_every_event(
    engine: str, request: pytest.FixtureRequest, model_dir: Path, tmp_path: Path
) -> None:
    """Only what Dockerfile.lambda copies into the image for ENGINE is importable, and it serves every event."""
    recipe = parse_dockerfile(DOCKERFILE.read_text(), engine)
    packages = engine_image_packages(request, engine)
    task_root = build_task_root(recipe, tmp_path / "task")
    # A venv without pip: the base interpreter and stdlib, none of the app venv's packages.
    bare = tmp_path / "bare-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)

    # The tiny model stands in for the baked one, trimmed by the model stage's own command.
    baked = bake_model(recipe, model_dir, tmp_path / "opt-model")
    template_env = load_template()["Resources"][FUNCTION]["Properties"]["Environment"]["Variables"]
    env = {**recipe.env, "MODEL_DIR": str(baked), "SERVED_MODEL_NAME": "distilgpt2"}
    env |= {"MAX_BATCH_SIZE": template_env["MAX_BATCH_SIZE"]}  # as the function runs: one request at a time
    env |= {key: str(tmp_path / "cache" / key) for key, value in recipe.env.items() if value.startswith("/tmp/")}
    # In the image, app files and packages share the task root; the app's copies win.
    search_path = f"{task_root}:{packages}"
    env |= {"PATH": "/usr/bin:/bin", "PYTHONPATH": search_path, "LAMBDA_TASK_ROOT": str(task_root)}
    env |= {"LD_LIBRARY_PATH": lambda_library_path(task_root, packages)}
    events = [f.read_text() for f in served_events()]
    if engine == "llamacpp":  # and structured output, which only this engine serves: llguidance from the image
        events.append(json.dumps(structured_event()))
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
    names = [f.name for f in served_events()] + (["structured output"] if engine == "llamacpp" else [])
    for name, response in zip(names, report["results"], strict=True):
        if name == EMBEDDINGS_EVENT and engine != "llamacpp":  # only llama.cpp embeds: the others say so
            assert response["statusCode"] == 400 and "ENGINE=llamacpp" in response["body"], response.get("body")
        elif "statusCode" in response:
            assert response["statusCode"] == 200, (name, response.get("body"))
        else:
            assert response["warmed"] is True, name
    if engine == "llamacpp":
        (choice,) = json.loads(report["results"][-1]["body"])["choices"]
        assert choice["finish_reason"] == "length" or isinstance(json.loads(choice["text"]), dict), choice
        # llama.cpp's libraries from beside the binding, and one CPU variant from bin/, as the engine loads them.
        ggml = [lib for lib in report["libraries"] if "/libggml" in lib or "/libllama" in lib]
        assert ggml and all(lib.startswith((f"{packages}/llama_cpp/lib/", f"{packages}/bin/")) for lib in ggml), ggml
        assert any(lib.startswith(f"{packages}/bin/libggml-cpu-") for lib in ggml), ggml


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_image_file_set_holds_no_build_tools_and_one_engine(engine: str, request: pytest.FixtureRequest) -> None:
    packages = engine_image_packages(request, engine)
    top = {p.name.lower() for p in packages.iterdir()}
    assert not {name for name in top if name.startswith(BUILD_PACKAGES)}, sorted(top)
    executables = {p.name for p in packages.rglob("*") if p.is_file() and os.access(p, os.X_OK)}
    assert not executables & BUILD_TOOLS, sorted(executables & BUILD_TOOLS)
    other = {"ctranslate2": "llama_cpp", "llamacpp": "ctranslate2"}[engine]
    assert other not in top, f"the {engine} image holds {other}"
    assert ("llguidance" in top) == (engine == "llamacpp"), "structured output's masks: the llama.cpp image only"
    if engine == "llamacpp":
        variants = sorted(p.name for p in (packages / "bin").glob("libggml-cpu-*.so"))
        assert "libggml-cpu-x64.so" in variants and len(variants) > 1, variants  # the portable build, every variant
        assert not (packages / "lib").exists() and not (packages / "include").exists()


# --- Makefile -----------------------------------------------------------------------------


def test_make_help_lists_every_target() -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY: (.*)$", makefile, flags=re.M).group(1).split())  # type: ignore[union-attr]
    result = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines()}
    assert listed == phony
    assert all(len(line.split(None, 1)) == 2 for line in result.stdout.splitlines())  # one line of text each
