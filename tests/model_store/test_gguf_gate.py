"""The GGUF quality gate: prepare-model scores every GGUF type with the llama.cpp engine against the fp32 weights and
serves the smallest that keeps perplexity within 5% and fp32's greedy probe answer as model.gguf, the others deleted."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from distilgpt2_api.model_store import engine_files, gguf_gate, is_prepared, read_manifest
from distilgpt2_api.model_store import prepare as prepare_module
from distilgpt2_api.model_store.errors import ModelStoreError
from distilgpt2_api.model_store.gguf_gate import LOSSLESS, SHIPPED, Score, choose_gguf, gguf_types
from distilgpt2_api.model_store.llamacpp_gguf import GGUF_NAME, write_gguf
from distilgpt2_api.model_store.manifest import QUALITY_RECORD, sha256_file
from distilgpt2_api.model_store.prepare import prepare_model
from distilgpt2_api.model_store.quality import QUALITY_TOLERANCE, Reference, fp32_reference

from model_factory import build_tiny_chat_llama, build_tiny_gpt2

CANDIDATES = {LOSSLESS, "f16", "q8_0", "q4_k_m"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gate") / "tiny-gpt2")


@pytest.fixture(scope="module")
def reference(tiny: Path) -> Reference:
    return fp32_reference(tiny)


def ggufs(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.glob("*.gguf"))


def record(model_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((model_dir / QUALITY_RECORD).read_text())  # type: ignore[no-any-return]


def assert_rule(gate: dict, reference_perplexity: float | None = None) -> None:  # type: ignore[type-arg]
    """The record's choice follows the rule on its own figures: the smallest of those that pass, else F32."""
    limit = gate["reference_perplexity"] * (1 + gate["tolerance"])
    if reference_perplexity is not None:
        assert gate["reference_perplexity"] == pytest.approx(reference_perplexity)
    for entry in gate["candidates"].values():
        if "error" not in entry:
            assert entry["passes"] == (entry["greedy_probe_agrees"] and entry["perplexity"] <= limit)
    passing = {key: entry for key, entry in gate["candidates"].items() if entry["passes"]}
    if passing:
        assert gate["passed"] and gate["chosen"] == min(passing, key=lambda key: passing[key]["size_bytes"])
    else:
        assert not gate["passed"] and gate["chosen"] == LOSSLESS


@pytest.mark.parametrize("build", [build_tiny_gpt2, build_tiny_chat_llama])
def test_prepare_serves_the_chosen_gguf_and_records_every_candidate(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = build(tmp_path / "source")
    out = tmp_path / "out"
    manifest = prepare_model("local", out, model_id=str(source))
    gate = record(out)
    assert gate["candidates"].keys() == CANDIDATES  # no shipped GGUF here
    for key, entry in gate["candidates"].items():
        assert entry["perplexity"] > 1 and entry["tokens_per_s"] > 0 and isinstance(entry["greedy_probe_agrees"], bool)
        assert abs(entry["perplexity_vs_fp32"]) < 0.01, (key, entry)  # random weights: every type is close
        assert entry["type"] == key.upper() and entry["size_bytes"] > 0 and entry["tensor_types"]
    assert gate["tolerance"] == QUALITY_TOLERANCE and gate["probe_tokens"] > 0 and gate["text_tokens"] > 100
    assert gate["speed"]["cpu"] and "probe" in gate["speed"]["method"]
    assert_rule(gate)
    # Only the chosen file is left, as model.gguf, and it is the chosen type.
    assert ggufs(out) == [GGUF_NAME]
    assert gguf_types(out / GGUF_NAME)[0] == gate["chosen_type"] == gate["chosen"].upper()
    assert gate["candidates"][gate["chosen"]]["size_bytes"] == (out / GGUF_NAME).stat().st_size
    # The manifest lists exactly what is there; llama.cpp's cold start fetches model.gguf, never the record.
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert manifest.files.keys() == on_disk and is_prepared(out, engine="llamacpp")
    assert manifest.files[GGUF_NAME].sha256 == sha256_file(out / GGUF_NAME)
    assert QUALITY_RECORD in manifest.files
    llamacpp = engine_files(manifest, "llamacpp")
    assert [name for name in llamacpp if name.endswith(".gguf")] == [GGUF_NAME]
    for engine in ("llamacpp", "ctranslate2", "transformers"):
        assert QUALITY_RECORD not in engine_files(manifest, engine)  # type: ignore[arg-type]
    assert (out / "ctranslate2-int8" / "quality.json").is_file()  # the CTranslate2 gate's own record stays


def test_a_shipped_gguf_is_a_candidate(tiny: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    write_gguf(model_dir, outtype="q8_0")  # stands in for SmolLM2's Q4_1: a GGUF that came with the model
    shipped = sha256_file(model_dir / GGUF_NAME)
    prepare_model("local", model_dir, model_id=str(model_dir))  # in place: the GGUF stays a candidate
    gate = record(model_dir)
    assert gate["candidates"].keys() == CANDIDATES | {SHIPPED}
    assert (
        gate["candidates"][SHIPPED]["type"] == "Q8_0"
        and gate["candidates"][SHIPPED]["made_by"] == "shipped with the model"
    )
    assert_rule(gate)
    assert ggufs(model_dir) == [GGUF_NAME]
    assert (sha256_file(model_dir / GGUF_NAME) == shipped) == (gate["chosen"] == SHIPPED)


def test_the_gate_runs_once(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    prepare_model("local", model_dir, model_id=str(model_dir))
    before = (model_dir / QUALITY_RECORD).read_text(), sha256_file(model_dir / GGUF_NAME)
    monkeypatch.setattr(gguf_gate, "choose_gguf", lambda *args, **kwargs: pytest.fail("gated again"))
    monkeypatch.setattr(prepare_module, "fp32_reference", lambda *args: pytest.fail("fp32 loaded again"))
    prepare_model("local", model_dir, model_id=str(model_dir))  # as a directory downloaded from S3 would be
    assert ((model_dir / QUALITY_RECORD).read_text(), sha256_file(model_dir / GGUF_NAME)) == before


def test_both_gates_share_one_fp32_reference(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def counted(model_dir: Path) -> Reference:
        calls.append(model_dir)
        return fp32_reference(model_dir)

    monkeypatch.setattr(prepare_module, "fp32_reference", counted)
    monkeypatch.setattr("distilgpt2_api.model_store.convert.fp32_reference", lambda *a: pytest.fail("loaded twice"))
    prepare_model("local", tmp_path / "out", model_id=str(tiny))
    assert len(calls) == 1
    ct2 = json.loads((tmp_path / "out" / "ctranslate2-int8" / "quality.json").read_text())
    assert ct2["reference_perplexity"] == record(tmp_path / "out")["reference_perplexity"]


def fake_scores(
    reference: Reference,
    speeds: dict[str, float],
    *,
    worse: dict[str, float] | None = None,
    disagree: frozenset[str] = frozenset(),
) -> Callable[[Path, str, Reference], Score]:
    """A scorer giving each candidate fp32's own figures at the given speed, except a perplexity `worse` times fp32's
    and a wrong first probe token for those in `disagree`."""

    def score(model_dir: Path, name: str, _reference: Reference) -> Score:
        key = name.removeprefix("model.").removesuffix(".gguf")
        answer = list(reference.answer)
        if key in disagree:
            answer[0] += 1
        perplexity = reference.perplexity * (worse or {}).get(key, 1.0)
        return Score(perplexity=perplexity, answer=answer, tokens_per_s=speeds[key])

    return score


@pytest.fixture
def fast_converter(tiny: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The converter's F32 of the tiny model, written once for the tests that only exercise the choice."""
    cache = tmp_path_factory.getbasetemp() / "tiny-f32.gguf"
    if not cache.is_file():
        shutil.copy(write_gguf(shutil.copytree(tiny, tmp_path_factory.mktemp("f32"), dirs_exist_ok=True)), cache)

    def copy(model_dir: Path, *, outtype: str, name: str) -> Path:
        assert outtype == LOSSLESS
        return Path(shutil.copy(cache, model_dir / name))

    monkeypatch.setattr(gguf_gate, "write_gguf", copy)


SPEEDS = {"q4_k_m": 400.0, "q8_0": 300.0, "f16": 200.0, LOSSLESS: 100.0}


@pytest.mark.usefixtures("fast_converter")
def test_a_candidate_that_fails_the_rule_is_never_chosen(tiny: Path, reference: Reference, tmp_path: Path) -> None:
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    # The smallest 10% worse in perplexity (probe fine), the next one answering the probe differently.
    gate = choose_gguf(
        model_dir, reference, score=fake_scores(reference, SPEEDS, worse={"q4_k_m": 1.10}, disagree=frozenset({"q8_0"}))
    )
    assert gate["chosen"] == "f16" and gate["passed"]
    q4, q8 = gate["candidates"]["q4_k_m"], gate["candidates"]["q8_0"]
    assert q4["perplexity_vs_fp32"] == pytest.approx(0.10) and q4["greedy_probe_agrees"] and not q4["passes"]
    assert q8["perplexity_vs_fp32"] == 0 and not q8["greedy_probe_agrees"] and not q8["passes"]
    assert_rule(gate)
    assert ggufs(model_dir) == [GGUF_NAME] and gguf_types(model_dir / GGUF_NAME)[0] == "F16"
    assert record(model_dir) == gate


@pytest.mark.usefixtures("fast_converter")
def test_within_the_tolerance_the_smallest_wins_whatever_the_speeds(
    tiny: Path, reference: Reference, tmp_path: Path
) -> None:
    """Speeds rank differently on each CPU (the image is gated on the machine that builds it): file size does not."""
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    slowest_smallest = {"q4_k_m": 100.0, "q8_0": 200.0, "f16": 300.0, LOSSLESS: 400.0}
    gate = choose_gguf(model_dir, reference, score=fake_scores(reference, slowest_smallest, worse={"q4_k_m": 1.049}))
    sizes = {key: entry["size_bytes"] for key, entry in gate["candidates"].items()}
    assert gate["chosen"] == min(sizes, key=sizes.__getitem__) and gate["chosen"] != LOSSLESS
    assert gate["candidates"][gate["chosen"]]["tokens_per_s"] < gate["candidates"][LOSSLESS]["tokens_per_s"]
    assert gate["note"] == "the smallest candidate that passes"
    assert_rule(gate)


@pytest.mark.usefixtures("fast_converter")
def test_when_none_passes_f32_is_served_and_the_record_says_so(
    tiny: Path, reference: Reference, tmp_path: Path
) -> None:
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    gate = choose_gguf(model_dir, reference, score=fake_scores(reference, SPEEDS, disagree=frozenset(SPEEDS)))
    assert gate["chosen"] == LOSSLESS and not gate["passed"] and "no candidate passed" in gate["note"]
    assert not any(entry["passes"] for entry in gate["candidates"].values())
    assert ggufs(model_dir) == [GGUF_NAME] and gguf_types(model_dir / GGUF_NAME)[0] == "F32"


def test_a_gguf_the_engine_cannot_load_is_recorded_and_never_chosen(
    tiny: Path, reference: Reference, tmp_path: Path
) -> None:
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    (model_dir / GGUF_NAME).write_bytes(b"GGUF made elsewhere, and broken" * 100)
    gate = choose_gguf(model_dir, reference)  # the real scorer, through the llama.cpp engine
    shipped = gate["candidates"][SHIPPED]
    assert shipped["type"] == "unknown" and not shipped["passes"] and "cannot load" in shipped["error"]
    assert gate["chosen"] != SHIPPED and ggufs(model_dir) == [GGUF_NAME]
    assert_rule(gate, reference.perplexity)


@pytest.mark.usefixtures("fast_converter")
def test_a_failed_gate_leaves_the_directory_as_it_was(
    tiny: Path, reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    (model_dir / GGUF_NAME).write_bytes(b"as shipped")

    def interrupted(*args: object) -> Score:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        choose_gguf(model_dir, reference, score=interrupted)
    assert ggufs(model_dir) == [GGUF_NAME] and (model_dir / GGUF_NAME).read_bytes() == b"as shipped"
    assert not (model_dir / QUALITY_RECORD).exists() and not list(model_dir.glob(".*partial*"))


@pytest.mark.usefixtures("fast_converter")
def test_a_type_that_cannot_be_made_is_recorded(
    tiny: Path, reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    real = gguf_gate.quantize_gguf

    def no_k_quants(model_dir: Path, ftype: str, **kwargs: str) -> Path:
        if ftype == "q4_k_m":
            raise ModelStoreError("llama.cpp could not quantize it")
        return real(model_dir, ftype, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gguf_gate, "quantize_gguf", no_k_quants)
    gate = choose_gguf(model_dir, reference, score=fake_scores(reference, SPEEDS))
    assert gate["candidates"]["q4_k_m"] == {"error": "llama.cpp could not quantize it", "passes": False}
    assert gate["chosen"] == "q8_0" and ggufs(model_dir) == [GGUF_NAME]


def test_without_the_binding_prepare_keeps_the_converters_f32(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare_module, "can_quantize", lambda: False)  # as in the image's model stage
    monkeypatch.setattr(gguf_gate, "choose_gguf", lambda *args, **kwargs: pytest.fail("gated without the binding"))
    manifest = prepare_model("local", tmp_path / "out", model_id=str(tiny))
    assert ggufs(tmp_path / "out") == [GGUF_NAME] and gguf_types(tmp_path / "out" / GGUF_NAME)[0] == "F32"
    assert QUALITY_RECORD not in manifest.files and not (tmp_path / "out" / QUALITY_RECORD).exists()
    assert read_manifest(tmp_path / "out") == manifest


@pytest.mark.usefixtures("fast_converter")
def test_gguf_type_serves_the_candidate_asked_for_and_records_the_rules_choice(
    tiny: Path, reference: Reference, tmp_path: Path
) -> None:
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    # The smallest answers the probe differently, so the rule takes q8_0; a user who wants it anyway asks for it.
    scores = fake_scores(reference, SPEEDS, disagree=frozenset({"q4_k_m"}))
    gate = choose_gguf(model_dir, reference, score=scores, prefer="q4_k_m")
    assert (gate["chosen"], gate["chosen_by"], gate["candidates"]["q4_k_m"]["passes"]) == ("q4_k_m", "GGUF_TYPE", False)
    assert gate["note"] == "GGUF_TYPE=q4_k_m: it fails the rule, which chooses q8_0"
    assert ggufs(model_dir) == [GGUF_NAME] and gguf_types(model_dir / GGUF_NAME)[0] == "Q4_K_M"
    assert record(model_dir) == gate


@pytest.mark.usefixtures("fast_converter")
def test_gguf_type_the_model_lacks_fails_and_leaves_the_directory_as_it_was(
    tiny: Path, reference: Reference, tmp_path: Path
) -> None:
    model_dir = shutil.copytree(tiny, tmp_path / "model")
    before = sorted(p.name for p in model_dir.iterdir())
    with pytest.raises(ModelStoreError, match="GGUF_TYPE=shipped cannot be served: this model has none"):
        choose_gguf(model_dir, reference, score=fake_scores(reference, SPEEDS), prefer=SHIPPED)
    with pytest.raises(ModelStoreError, match="GGUF_TYPE=q2_k: one of auto, shipped, f32, f16, q8_0, q4_k_m"):
        choose_gguf(model_dir, reference, score=fake_scores(reference, SPEEDS), prefer="q2_k")
    assert sorted(p.name for p in model_dir.iterdir()) == before
