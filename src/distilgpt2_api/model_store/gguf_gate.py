"""The GGUF quality gate: which GGUF type the llama.cpp engine serves as `model.gguf`.

Candidates: the GGUF the model shipped as (SmolLM2's Q4_1), F32 written by llama.cpp's converter from the
safetensors, and F16, Q8_0 and Q4_K_M quantized from that F32 by the binding's llama_model_quantize. Each is scored
by the llama.cpp engine itself, against the fp32 transformers reference (quality.Reference), by the rule the
CTranslate2 gate uses: perplexity on QUALITY_TEXT within QUALITY_TOLERANCE of fp32's *and* fp32's greedy answer to the
probe. The smallest file that passes becomes model.gguf (the faster of two the same size); the others are deleted,
so the manifest lists only what is served and an S3 cold start fetches only it. When none passes, F32 (lossless) is
served and the record says so. The record is the top-level quality.json (RECORD_NAME).

Why the smallest, not the fastest measured: the quality part of the rule does not depend on the CPU, the speed
ranking does (AMX speeds up quantized types only; Zen 4 and Sapphire Rapids ordered the engines the other way round),
and the image is gated on whatever machine builds it, then run on whatever CPU Lambda gives it. Decoding these small
models reads every weight once a token, so fewer bytes is faster on every CPU measured (SmolLM2 on an Intel Xeon with
AMX: Q4_1 126 tok/s, F16 32). Each candidate's speed is still measured and recorded, for the record's reader.

Needs llama-cpp-python (`can_quantize()`); prepare keeps the converter's F32 (or the shipped GGUF) without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from distilgpt2_api.engines.base import Chunk, ModelInfo, cpu_identity, cpu_name

from .errors import ModelStoreError
from .llamacpp_gguf import GGUF_NAME, PACKAGE_VERSION, quantize_gguf, write_gguf
from .manifest import QUALITY_RECORD
from .quality import PROBE_TOKENS, QUALITY_TOLERANCE, Reference

logger = logging.getLogger(__name__)

RECORD_NAME = QUALITY_RECORD  # quality.json, beside model.gguf (the CTranslate2 gate's is in ctranslate2-int8/)
SHIPPED = "shipped"  # the candidate that is the GGUF the model came with
LOSSLESS = "f32"  # written by the converter from the safetensors; served when no candidate passes
QUANTIZED = ("f16", "q8_0", "q4_k_m")  # quantized from the F32 by llama_model_quantize
CANDIDATES = (SHIPPED, LOSSLESS, *QUANTIZED)
AUTO = "auto"  # GGUF_TYPE: the rule chooses
SPEED_RUNS = 3  # the probe's greedy decode is timed this many times; the fastest run counts
THREADS = 1


@dataclass(frozen=True)
class Score:
    """One candidate under the llama.cpp engine."""

    perplexity: float  # on the reference's token ids
    answer: list[int]  # greedy answer to the probe, as long as the reference's
    tokens_per_s: float  # greedy decode speed (see SPEED_METHOD)
    cpu_variant: str = ""  # llama.cpp's CPU backend that ran it (GET / shows the one serving)


SPEED_METHOD = (
    f"greedy decode of the probe's answer after its prompt: {PROBE_TOKENS} tokens, one llama_decode each, "
    f"{THREADS} thread, 1 slot; the fastest of {SPEED_RUNS} runs"
)


def candidate_name(key: str) -> str:
    """Each candidate's file while the gate runs: model.<key>.gguf (the winner is renamed model.gguf)."""
    return f"{Path(GGUF_NAME).stem}.{key}.gguf"


def is_gated(model_dir: Path) -> bool:
    """Whether the gate has chosen model.gguf already (a directory from S3, or prepared in place before)."""
    return (model_dir / GGUF_NAME).is_file() and (model_dir / RECORD_NAME).is_file()


def choose_gguf(
    model_dir: Path,
    reference: Reference,
    *,
    score: Callable[[Path, str, Reference], Score] | None = None,
    prefer: str = AUTO,
    cpu_variant: str = AUTO,
) -> dict[str, Any]:
    """Write every candidate, score each, keep the smallest that passes as model.gguf (or `prefer`, a candidate's
    name, whatever its score: GGUF_TYPE), delete the rest, and write the record (quality.json). Returns the record.
    `score` replaces `score_gguf` (tests); `cpu_variant` pins llama.cpp's CPU backend (LLAMA_CPU_VARIANT)."""
    if prefer not in (AUTO, *CANDIDATES):
        raise ModelStoreError(f"GGUF_TYPE={prefer}: one of {', '.join((AUTO, *CANDIDATES))}")
    score = score or partial(score_gguf, cpu_variant=cpu_variant)
    shipped = model_dir / GGUF_NAME
    files: dict[str, str] = {}  # candidate -> its file while the gate runs
    for stale in model_dir.glob(f"{Path(GGUF_NAME).stem}.*.gguf"):
        stale.unlink()  # quantized copies an earlier prepare left (model.q8_0.gguf): never served
    if shipped.is_file():
        files[SHIPPED] = candidate_name(SHIPPED)
        os.replace(shipped, model_dir / files[SHIPPED])
    try:
        files[LOSSLESS] = write_gguf(model_dir, outtype=LOSSLESS, name=candidate_name(LOSSLESS)).name
        entries: dict[str, dict[str, Any]] = {}
        for key in QUANTIZED:
            try:
                files[key] = quantize_gguf(model_dir, key, source=files[LOSSLESS], name=candidate_name(key)).name
            except ModelStoreError as error:
                entries[key] = {"error": str(error), "passes": False}
        for key, name in files.items():
            entries[key] = _evaluate(model_dir, key, name, reference, score)
        passing = [key for key in files if entries[key]["passes"]]
        ruled = min(passing, key=lambda key: _size_then_speed(entries[key]), default=LOSSLESS)
        if prefer != AUTO and (prefer not in files or "error" in entries[prefer]):
            reason = entries.get(prefer, {}).get("error", "this model has none")
            raise ModelStoreError(f"GGUF_TYPE={prefer} cannot be served: {reason}")
        chosen = ruled if prefer == AUTO else prefer
    except BaseException:
        for key, name in files.items():
            if key != SHIPPED:
                (model_dir / name).unlink(missing_ok=True)
        if SHIPPED in files:
            os.replace(model_dir / files[SHIPPED], shipped)  # as it was
        raise
    os.replace(model_dir / files[chosen], model_dir / GGUF_NAME)
    for key, name in files.items():
        if key != chosen:
            (model_dir / name).unlink()
    record = {
        "gguf": GGUF_NAME,
        "chosen": chosen,
        "chosen_type": entries[chosen].get("type"),
        "passed": bool(passing),
        "chosen_by": "the rule" if prefer == AUTO else "GGUF_TYPE",
        "note": (
            f"GGUF_TYPE={prefer}: it {'passes' if entries[chosen]['passes'] else 'fails'} the rule, "
            f"which chooses {ruled}"
            if prefer != AUTO
            else "the smallest candidate that passes"
            if passing
            else f"no candidate passed: {LOSSLESS.upper()} (the safetensors' weights, lossless) is served"
        ),
        "rule": (
            f"perplexity on QUALITY_TEXT at most {QUALITY_TOLERANCE:.0%} above fp32's (transformers) and fp32's "
            "greedy answer to the probe; of those, the smallest file"
        ),
        "reference_perplexity": reference.perplexity,
        "tolerance": QUALITY_TOLERANCE,
        "text_tokens": len(reference.token_ids),
        "probe_tokens": len(reference.answer),
        "candidates": entries,
        "speed": {"method": SPEED_METHOD, **machine()},
    }
    (model_dir / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    logger.info(
        "GGUF gate: %s (%s) serves as %s; %s",
        chosen, record["chosen_type"], GGUF_NAME,
        ", ".join(f"{k} ppl {e['perplexity']:.3f} {e['tokens_per_s']:.0f} tok/s" for k, e in entries.items()
                  if "perplexity" in e),
    )  # fmt: skip
    return record


def _size_then_speed(entry: dict[str, Any]) -> tuple[int, float]:
    """The rule's order: the smallest file first, the faster of two the same size."""
    return entry["size_bytes"], -entry["tokens_per_s"]


def _evaluate(
    model_dir: Path, key: str, name: str, reference: Reference, score: Callable[[Path, str, Reference], Score]
) -> dict[str, Any]:
    path = model_dir / name
    file_type, tensor_types = gguf_types(path)
    entry: dict[str, Any] = {
        "type": file_type,
        "tensor_types": tensor_types,  # a K-quant falls back where rows are not a multiple of 256 (tiny models)
        "made_by": (
            "shipped with the model"
            if key == SHIPPED
            else "llama.cpp's converter, from the safetensors"
            if key == LOSSLESS
            else f"llama_model_quantize, from {LOSSLESS.upper()}"
        ),
        "size_bytes": path.stat().st_size,
    }
    try:
        result = score(model_dir, name, reference)
    except Exception as error:  # a GGUF the engine cannot load or run is never served
        logger.warning("GGUF gate: %s (%s) cannot be scored: %s", key, name, error)
        return {**entry, "error": str(error), "passes": False}
    return {
        **entry,
        "perplexity": result.perplexity,
        "perplexity_vs_fp32": result.perplexity / reference.perplexity - 1,
        "greedy_probe_agrees": result.answer == reference.answer,
        "probe_tokens_agreeing": next(
            (i for i, (a, b) in enumerate(zip(result.answer, reference.answer, strict=False)) if a != b),
            min(len(result.answer), len(reference.answer)),
        ),  # how far its answer follows fp32's
        "tokens_per_s": result.tokens_per_s,
        "cpu_variant": result.cpu_variant,
        "passes": reference.passes(result.perplexity, result.answer),
    }


def score_gguf(model_dir: Path, name: str, reference: Reference, *, cpu_variant: str = AUTO) -> Score:
    """Perplexity, greedy probe answer and decode speed of `model_dir/<name>` under the llama.cpp engine."""
    from distilgpt2_api.engines.llamacpp_engine import LlamaCppEngine

    ids, probe = reference.token_ids, reference.probe_ids
    context = max(len(ids), len(probe) + PROBE_TOKENS + 1)
    engine = LlamaCppEngine(
        ModelInfo.read(model_dir),
        threads=THREADS,
        slots=1,
        context=context,
        gguf=name,
        cpu_variant=cpu_variant,
    )
    try:
        # forward() returns the logits after a chunk's last token: one token a call gives every next-token logit.
        nll = 0.0
        for position in range(len(ids) - 1):
            logits = engine.forward([Chunk(slot=0, token_ids=[ids[position]], start=position)])[0]
            nll -= _log_softmax(logits)[ids[position + 1]]
        first = int(np.argmax(engine.forward([Chunk(slot=0, token_ids=probe, start=0)])[0]))
        best, answer = math.inf, [first]
        for _ in range(SPEED_RUNS):  # each run re-feeds from the end of the prompt (the slot keeps the prompt)
            tokens = [first]
            started = time.perf_counter()
            for step in range(PROBE_TOKENS):
                logits = engine.forward([Chunk(slot=0, token_ids=[tokens[-1]], start=len(probe) + step)])[0]
                tokens.append(int(np.argmax(logits)))
            best = min(best, time.perf_counter() - started)
            answer = tokens
    finally:
        engine.close()
    return Score(
        perplexity=math.exp(nll / (len(ids) - 1)),
        answer=answer[: len(reference.answer)],
        tokens_per_s=PROBE_TOKENS / best,
        cpu_variant=engine.kernels.variant,
    )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def gguf_types(path: Path) -> tuple[str, dict[str, int]]:
    """The GGUF's file type as llama.cpp names it (F32, Q8_0, Q4_K_M...) and how many tensors it stores in each type,
    from its header; ("unknown", {}) if unreadable (the engine will say more)."""
    try:
        from gguf import GGUFReader, LlamaFileType

        reader = GGUFReader(path)
        field = reader.fields.get("general.file_type")
        name = LlamaFileType(int(field.contents())).name if field is not None else "unknown"
        counts: dict[str, int] = {}
        for tensor in reader.tensors:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    except Exception:  # noqa: BLE001 - the reader fails in many ways on a foreign file
        return "unknown", {}
    return name.removeprefix("MOSTLY_").removeprefix("ALL_"), dict(sorted(counts.items()))


def machine() -> dict[str, Any]:
    """Where the speeds were measured: the CPU's model name and the vector extensions llama.cpp can use."""
    fields = (line.partition(": ") for line in cpu_identity().splitlines())
    flags = set(next((value for key, _, value in fields if key == "flags"), "").split())
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni")
    return {
        "cpu": cpu_name(),
        "cpu_flags": [flag for flag in wanted if flag in flags],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "llama_cpp_python": PACKAGE_VERSION,
    }
