"""Benchmark: the tutorial's transformers pipeline vs the service's engines, measured side by side in one run.

    python bench/bench.py [--quick] [--models distil,smollm2] [--out bench/]

Writes RESULTS.md and results.json to --out: cold start (interpreter, imports, model load, first response), warm
latency of a 50-token request (1 greedy sequence; 5 sampled), tokens/s against the memory-bandwidth bound, peak RSS,
CTranslate2 and torch alternatives, quality (perplexity, greedy agreement), targets and Lambda sizing.
Process-level timing is pyperf's (`python -m pyperf command` / `timeit`: fresh worker processes, warmups discarded):
the cold start is timed in stages, each stage's command doing one step more than the last; the pipeline's warm
requests in its workers. The engines are the service itself, under uvicorn on loopback (bench/harness.py), asked
through bench/load.py's client. `--quick` runs everything once on a tiny random GPT-2 (the smoke test); its timings
mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import load  # noqa: E402
from harness import Service  # noqa: E402

from distilgpt2_api.engines.cpus import usable_cpus  # noqa: E402

SYSTEMS = ("pipeline", "llamacpp", "ctranslate2", "transformers")  # baseline first, then the default engine
DEFAULT = "llamacpp"
PEER = "llama-server"
CT2_COMPUTE_TYPES = ("int8", "int8_float32", "int16", "float32")
PROMPT, NEW_TOKENS, SAMPLED_SEQUENCES, TOP_K = "Once upon a time", 50, 5, 50  # top-k 50: the tutorial's sampling
GREEDY_PROMPT, GREEDY_TOKENS = "Once upon a time", 20
PACKAGES = ("torch", "transformers", "ctranslate2", "tokenizers", "numpy", "fastapi", "uvicorn", "pyperf")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="everything once, on a tiny model (smoke test)")
    parser.add_argument("--models", default="distil,smollm2", help="comma-separated: distil, smollm2")
    parser.add_argument("--out", type=Path, help="output directory (default bench/, or a temp dir with --quick)")
    parser.add_argument("--rounds", type=int, help="fresh processes per figure (default 3; 1 with --quick)")
    parser.add_argument("--runs", type=int, help="warm requests timed per process (default 3; 1 with --quick)")
    parser.add_argument("--wait-idle", type=float, help="seconds to wait for an idle machine per model (default 120)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "distilgpt2-api-bench")
    parser.add_argument("--smollm2-dir", type=Path, default=harness.ROOT / "models" / "default")
    parser.add_argument("--quick-model", type=Path, help="an already prepared tiny model dir (--quick only)")
    peer = "llama-server built from the llama.cpp that llama-cpp-python vendors (not part of this project): measured "
    peer += "on each model's model.gguf beside the engines"
    parser.add_argument("--llama-server", type=Path, help=peer)
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from --out's results.json")
    args = parser.parse_args(argv)
    args.out = args.out or (Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else harness.BENCH)
    args.models = ["tiny"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    args.rounds, args.runs = args.rounds or (1 if args.quick else 3), args.runs or (1 if args.quick else 3)
    args.wait_idle = args.wait_idle if args.wait_idle is not None else (0.0 if args.quick else 120.0)
    return args


def memory_bandwidth(quick: bool) -> dict[str, Any]:
    """numpy copy of a large array, 1 and 2 threads: GB/s counting bytes read plus bytes written."""
    import numpy as np

    size = (64 if quick else 512) * 2**20
    src, dst = np.ones(size // 8), np.empty(size // 8)

    def copy(threads: int) -> float:
        spans = [(int(p[0]), int(p[-1]) + 1) for p in np.array_split(np.arange(src.size), threads)]
        workers = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in spans]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return 2 * size / (time.perf_counter() - started) / 1e9

    copy(1)  # touches every page once
    best = {threads: max(copy(threads) for _ in range(2 if quick else 5)) for threads in (1, 2)}
    return {
        "array_mb": size // 2**20,
        "copy_gbps_1_thread": best[1],
        "copy_gbps_2_threads": best[2],
        "method": "numpy copyto, best of repeats, (bytes read + bytes written) / time",
    }


# --- models ----------------------------------------------------------------------------------------------


def prepare_model(name: str, args: argparse.Namespace, workdir: Path) -> Path:
    """tiny: the tests' tiny GPT-2; distil: distilgpt2's shape (6 layers, 768 wide, 50,257 tokens) with random
    weights, built once and cached; smollm2: a prepared SmolLM2 directory."""
    sys.path.insert(0, str(harness.ROOT / "tests"))  # model_factory: the tests' model builders
    from distilgpt2_api.model_store import write_manifest
    from distilgpt2_api.model_store.convert import convert_for_ctranslate2
    from distilgpt2_api.model_store.llamacpp_gguf import write_gguf

    from model_factory import EOS, build_gpt2_size_tokenizer, build_tiny_gpt2

    if name == "tiny":
        if args.quick_model:
            return Path(args.quick_model)
        path = build_tiny_gpt2(workdir / "tiny-gpt2")
        convert_for_ctranslate2(path)
        write_gguf(path)
        return path
    if name == "smollm2":
        if (
            not (args.smollm2_dir / "ctranslate2-int8" / "model.bin").is_file()
            or not (args.smollm2_dir / "model.gguf").is_file()
        ):
            raise SystemExit(f"{args.smollm2_dir} is not a prepared model (no ctranslate2-int8/model.bin, model.gguf)")
        return Path(args.smollm2_dir)
    if name != "distil":
        raise SystemExit(f"unknown model {name!r}: choose from distil, smollm2")
    path = args.cache_dir / "distilgpt2-shape-v2"  # v1 padded a 1,000-token BPE with 49,257 added tokens
    if (path / "ctranslate2-int8" / "model.bin").is_file():
        return with_gguf(path)
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    # A tokenizer of GPT-2's size (no padding tokens): a small BPE with tokens added on top would make the
    # pipeline's decoding, not its model, the baseline's cost.
    tokenizer = build_gpt2_size_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        # A zero EOS row in the tied embedding gives EOS logit 0, far below the best of 50k random logits:
        # random weights never end a 50-token request early, so every system times 50 steps.
        model.transformer.wte.weight[eos] = 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_manifest(path, source="local", model_id="distilgpt2-shape-random")
    convert_for_ctranslate2(path)
    return with_gguf(path)


def with_gguf(model_dir: Path) -> Path:
    """`model_dir` with the GGUF its gate chooses (prepare-model in place, as the service's model store does)."""
    if not (model_dir / "model.gguf").is_file():
        command = [sys.executable, "-m", "distilgpt2_api", "prepare-model", "--source", "local"]
        subprocess.run([*command, "--model-id", str(model_dir), "--output", str(model_dir)], check=True)
    return model_dir


def gguf_type(model_dir: Path) -> str:
    """The file type of the GGUF our llama.cpp engine reads (its header, as the model store reads it)."""
    from distilgpt2_api.model_store.gguf_gate import gguf_types

    return gguf_types(model_dir / "model.gguf")[0]


def params_read_per_token(model_dir: Path) -> dict[str, Any]:
    """Weights a decode step reads: every 2-D matrix, minus lookup tables (position embeddings; the token
    embedding too unless it doubles as the output projection, as in tied models)."""
    with (model_dir / "model.safetensors").open("rb") as file:
        header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    shapes = {name: info["shape"] for name, info in header.items() if name != "__metadata__"}
    matrices = {name: shape[0] * shape[1] for name, shape in shapes.items() if len(shape) == 2}
    lookups = {n for n in matrices if "wpe" in n or "position" in n}
    if any(n.endswith("lm_head.weight") for n in matrices):
        lookups |= {n for n in matrices if "wte" in n or "embed_tokens" in n}
    counted = sum(v for n, v in matrices.items() if n not in lookups)
    return {
        "params": counted,
        "all_params": sum(math.prod(s) for s in shapes.values()),
        "excluded": sorted(lookups),
    }


# --- cold start and warm requests ------------------------------------------------------------------------


def preamble(env: dict[str, str]) -> str:
    return f"import os, sys; sys.path.insert(0, {str(harness.SRC)!r}); os.environ.update({env!r})"


def cold_stages(system: str, model_dir: Path) -> dict[str, list[str]]:
    """Statements of each cold-start stage, each stage the one before plus one step."""
    if system == "pipeline":
        steps = [
            "from transformers import pipeline",
            f"pipe = pipeline('text-generation', model={str(model_dir)!r})",
            f"pipe({PROMPT!r}, max_new_tokens={NEW_TOKENS}, do_sample=False)",
        ]
    else:  # the web stack and the engine's library; importing the app loads the model; a first POST /generate
        steps = [
            f"import fastapi.testclient, uvicorn, distilgpt2_api.engines.{system}_engine",
            "import distilgpt2_api.api as api",
            f"body = {{'prompt': {PROMPT!r}, 'max_new_tokens': {NEW_TOKENS}}}",
            "assert fastapi.testclient.TestClient(api.app).post('/generate', json=body).is_success",
        ]
    return {stage: steps[:count] for count, stage in enumerate(("interpreter", "import", "load", "first_response"))}


def cold_start(system: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Each stage timed by `pyperf command` (fresh processes, one warmup each: the OS page cache is warm)."""
    env = {"MODEL_DIR": str(model_dir), "ENGINE": system, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    options = ["-p", str(args.rounds), "-n", "1", "-w", "1", "-l", "1"]
    stages = {
        stage: harness.pyperf_values("command", [sys.executable, "-c", "; ".join([preamble(env), *steps])], options)
        for stage, steps in cold_stages(system, model_dir).items()
    }
    medians = [s["median_s"] for s in stages.values()]
    parts = {f"{stage}_s": b - a for stage, a, b in zip(stages, [0.0, *medians], medians, strict=False)}
    return {"cold_start": parts | {"total_s": medians[-1]}, "cold_start_totals_s": stages["first_response"]["values_s"]}


def timed(median_s: float, runs_s: list[float], tokens: float) -> dict[str, Any]:
    return {"median_s": median_s, "runs_s": runs_s, "tokens": tokens, "tokens_per_s": tokens / median_s}


def pipeline_warm(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`pyperf timeit` of a pipeline created once (in each worker), exactly 50 new tokens per sequence."""
    setup = f"from transformers import pipeline\npipe = pipeline('text-generation', model={str(model_dir)!r})"
    call, env = (
        f"pipe({PROMPT!r}, max_new_tokens={NEW_TOKENS}, min_new_tokens={NEW_TOKENS}, ",
        {"TRANSFORMERS_VERBOSITY": "error"},
    )
    greedy = timeit(setup, call + "do_sample=False)", env, args, args.runs)
    sampled = call + f"do_sample=True, top_k={TOP_K}, num_return_sequences={SAMPLED_SEQUENCES})"
    sampled = timeit(setup, sampled, env, args, args.runs, NEW_TOKENS * SAMPLED_SEQUENCES)
    return {
        "warm": {"greedy": greedy, "sampled": sampled},
        "peak_rss_mb": max(greedy["peak_rss_mb"], sampled["peak_rss_mb"]),
        "threads": len(os.sched_getaffinity(0)),
        "compute": "float32 (torch)",
    }


# The Lambda path in process: `handler.handler` with the HTTP API event of POST /generate, as Lambda calls it.
HANDLER_SETUP = """import json, sys
sys.path.insert(0, {root!r})
import handler
event = json.loads(open({event!r}).read())
event |= {{'body': json.dumps({{'prompt': {prompt!r}, 'max_new_tokens': {tokens}}}), 'isBase64Encoded': False}}"""
HANDLER_CALL = "assert handler.handler(event, None)['statusCode'] == 200"


def handler_warm(model_dir: Path, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """`pyperf timeit` of a 50-token greedy POST /generate through `handler.handler` (Mangum, the app, the engine)."""
    event = harness.ROOT / "events" / "post-generate.json"
    setup = HANDLER_SETUP.format(root=str(harness.ROOT), event=str(event), prompt=PROMPT, tokens=NEW_TOKENS)
    env = {"MODEL_DIR": str(model_dir), "ENGINE": engine, "LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    return timeit(setup, HANDLER_CALL, env, args, args.runs)


SAMPLED = {"do_sample": True, "top_k": TOP_K, "num_return_sequences": SAMPLED_SEQUENCES}
WARM_ROUTES = [
    load.post("greedy", "/generate"),
    load.post("sampled", "/generate", **SAMPLED),
    load.post("sampled_seeded", "/generate", **SAMPLED, seed=1234),
]


def service_warm(model_dir: Path, engine: str, runs: int, threads: int | None = None) -> dict[str, Any]:
    """The service (ENGINE=engine) on loopback, one client: each route once to warm up, then `runs` times each."""
    env = {"ENGINE": engine, "MAX_REQUEST_SECONDS": "600", "GATEWAY_TIMEOUT_SECONDS": "900"}
    with Service.ours(model_dir, env | ({"THREADS": str(threads)} if threads else {})) as server:
        for requests in (len(WARM_ROUTES), runs * len(WARM_ROUTES)):
            run = load.run_load(server.base_url, server.pid, WARM_ROUTES, 1, NEW_TOKENS, requests=requests)
            if (figures := asyncio.run(run))["errors"]:
                raise RuntimeError(f"{engine}: {figures['error_samples']}")
        peak_rss_mb = harness.proc_status_bytes(server.pid, "VmHWM") / 2**20
    warm = {}
    for route in WARM_ROUTES:
        latency = figures["latency"][route.label]
        warm[route.label] = timed(latency["p50_ms"] / 1000, [], latency["tokens"] / latency["requests"])
    return {"warm": warm, "peak_rss_mb": peak_rss_mb}


def threads(engine: str) -> int:
    """THREADS as the service sets it for `engine` here (unset: its default for this machine)."""
    from distilgpt2_api.engines.cpus import default_threads
    from distilgpt2_api.settings import get_settings

    return get_settings().threads or default_threads(engine).count


def peer_figures(model_dir: Path, binary: Path, runs: int) -> dict[str, Any]:
    """llama-server on the same GGUF with as many threads as our llama.cpp engine, one client: 50 greedy tokens over
    its /v1/completions, warmed up once (no cold start: it is not a Python process to stage)."""
    others, count = harness.OthersLoad(), str(usable_cpus().count)
    port = harness.free_port()
    command = [str(binary), "-m", str(model_dir / "model.gguf"), "-t", count, "-tb", count, "-np", "1"]
    command += ["-c", "2048", "--host", harness.HOST, "--port", str(port), "--no-webui"]
    route = [load.post("greedy", "/v1/completions", temperature=0)]
    with Service(command, port, health="/health") as server:
        for requests in (1, runs):
            figures = asyncio.run(load.run_load(server.base_url, server.pid, route, 1, NEW_TOKENS, requests=requests))
            if figures["errors"]:
                raise RuntimeError(f"llama-server: {figures['error_samples']}")
        peak_rss_mb = harness.proc_status_bytes(server.pid, "VmHWM") / 2**20
    latency = figures["latency"]["greedy"]
    warm = {"greedy": timed(latency["p50_ms"] / 1000, [], latency["tokens"] / latency["requests"])}
    return {"warm": warm, "peak_rss_mb": peak_rss_mb, "threads": int(count), "processes": 1} | {
        "compute": f"{gguf_type(model_dir)} GGUF",
        "foreign_load_cores": [others.cores()],
    }


def system_figures(system: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from distilgpt2_api.engines.ctranslate2_engine import CT2_SUBDIR, prepared_compute_type

    others = harness.OthersLoad()
    figures = cold_start(system, model_dir, args) | {"processes": args.rounds}
    if system == "pipeline":  # a pipeline created per request: its load and first call, in a warm process
        per_request = figures["cold_start"]["load_s"] + figures["cold_start"]["first_response_s"]
        figures |= pipeline_warm(model_dir, args) | {"per_request_pipeline_s": per_request}
    else:
        compute = {
            "ctranslate2": prepared_compute_type(model_dir / CT2_SUBDIR),
            "llamacpp": f"{gguf_type(model_dir)} GGUF",
        }.get(system, "float32 (torch)")
        figures |= service_warm(model_dir, system, args.runs) | {"threads": threads(system), "compute": compute}
        figures["warm"]["greedy_via_handler"] = handler_warm(model_dir, system, args)
    return figures | {"foreign_load_cores": [others.cores()]}


# --- alternatives and quality ----------------------------------------------------------------------------

CT2_SETUP = """import ctranslate2, tokenizers
tokenizer = tokenizers.Tokenizer.from_file({dir!r} + '/tokenizer.json')
prompt = [tokenizer.id_to_token(i) for i in tokenizer.encode({prompt!r}).ids]
generator = ctranslate2.Generator({dir!r} + '/ctranslate2-int8', compute_type={ct!r}, intra_threads={threads})"""
CT2_GREEDY = (
    f"generator.generate_batch([prompt], max_length={NEW_TOKENS}, min_length={NEW_TOKENS}, sampling_topk=1, "
    "include_prompt_in_result=False)"
)
TORCH_SETUP = """import torch, transformers
torch.set_num_threads({threads})
tokenizer = transformers.AutoTokenizer.from_pretrained({dir!r})
model = transformers.AutoModelForCausalLM.from_pretrained({dir!r}, dtype=torch.float32).eval()
if {quantize}: model = torch.ao.quantization.quantize_dynamic(model, {{torch.nn.Linear}}, dtype=torch.qint8)
inputs = tokenizer({prompt!r}, return_tensors='pt')"""
TORCH_GREEDY = (
    f"torch.inference_mode()(model.generate)(**inputs, max_new_tokens={NEW_TOKENS}, min_new_tokens={NEW_TOKENS}, "
    "do_sample=False, pad_token_id=tokenizer.eos_token_id)"
)


def timeit(
    setup: str, statement: str, env: dict[str, str], args: argparse.Namespace, runs: int, tokens: int = NEW_TOKENS
) -> dict[str, Any]:
    """`pyperf timeit` of `statement` after `setup` (lines), `runs` values per worker, warmup discarded."""
    options = ["-p", str(args.rounds), "-n", str(runs), "-w", "1", "-l", "1", f"-s{preamble(env)}"]
    values = harness.pyperf_values("timeit", [statement], options + [f"-s{line}" for line in setup.splitlines()])
    return timed(values["median_s"], values["values_s"], tokens) | {"peak_rss_mb": values["peak_rss_mb"]}


def ct2_alternatives(model_dir: Path, quality: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """CTranslate2 directly, compute types × threads, on both backends (Intel MKL and oneDNN, by CT2_USE_MKL).
    Load time, memory added and perplexity are taken here, on the default backend; timings in pyperf's workers."""
    import ctranslate2
    import psutil

    intel = "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    other = ("oneDNN (CT2_USE_MKL=0)", "0") if intel else ("Intel MKL (CT2_USE_MKL=1)", "1")
    backends = [("default (Intel MKL on Intel)" if intel else "default (oneDNN on AMD)", {}, (1, 2), args.runs)]
    backends.append((other[0], {"CT2_USE_MKL": other[1]}, (2,), 1))  # a first look: one run per compute type
    supported, out = sorted(ctranslate2.get_supported_compute_types("cpu")), []
    for backend, env, threads, runs in backends:
        rows: list[dict[str, Any]] = []
        for ct in CT2_COMPUTE_TYPES:
            facts: dict[str, Any] = {"compute_type": ct}
            if ct in supported and not env:
                rss, started = psutil.Process().memory_info().rss, time.perf_counter()
                generator = ctranslate2.Generator(str(model_dir / "ctranslate2-int8"), compute_type=ct)
                facts |= {"resolved_compute_type": generator.compute_type, "load_s": time.perf_counter() - started}
                facts |= {"rss_added_mb": (psutil.Process().memory_info().rss - rss) / 2**20}
                facts["perplexity"] = quality(generator)
                del generator
            for count in threads:
                setup = CT2_SETUP.format(dir=str(model_dir), prompt=PROMPT, ct=ct, threads=count)
                try:
                    rows.append(facts | {"threads": count, "greedy": timeit(setup, CT2_GREEDY, env, args, runs)})
                except RuntimeError as error:  # this backend has no such compute type on this CPU
                    rows.append(facts | {"skipped": "not supported by this backend here", "error": str(error)[-300:]})
                    break
        out.append({"backend": backend, "supported": supported, "rows": rows})
    return out


def quality_and_torch(model_dir: Path, compute_types: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Perplexity of a fixed paragraph and a 20-token greedy continuation, transformers fp32 vs CTranslate2 (the
    same token ids); torch fp32 vs dynamic int8 quantization of nn.Linear; CTranslate2's alternatives."""
    import ctranslate2
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.pytorch_utils import Conv1D

    from distilgpt2_api.model_store.quality import ctranslate2_perplexity, model_context_length, perplexity

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    score_ids = list(tokenizer(harness.PARAGRAPH)["input_ids"])[: model_context_length(model)]
    score_tokens, eos = tokenizer.convert_ids_to_tokens(score_ids), tokenizer.eos_token_id
    prompt_ids = list(tokenizer(GREEDY_PROMPT)["input_ids"])
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=GREEDY_TOKENS, pad_token_id=eos)
    reference = out[0, len(prompt_ids) :].tolist()
    quality: dict[str, Any] = {"scored_tokens": len(score_ids) - 1}
    quality["perplexity"] = {"transformers_float32": perplexity(model, score_ids)}
    quality["greedy"] = {"transformers_float32": {"ids": reference, "text": tokenizer.decode(reference)}}
    for ct in compute_types:
        generator = ctranslate2.Generator(str(model_dir / "ctranslate2-int8"), compute_type=ct)
        quality["perplexity"][f"ctranslate2_{ct}"] = ctranslate2_perplexity(generator, score_tokens)
        tokens = tokenizer.convert_ids_to_tokens(prompt_ids)
        greedy = {"max_length": GREEDY_TOKENS, "sampling_topk": 1, "end_token": [eos], "return_end_token": True}
        ids = list(generator.generate_batch([tokens], include_prompt_in_result=False, **greedy)[0].sequences_ids[0])
        entry: dict[str, Any] = {"ids": ids, "text": tokenizer.decode(ids), "identical": ids == reference}
        if ids != reference:
            step = next((i for i, (a, b) in enumerate(zip(ids, reference, strict=False)) if a != b), len(ids) - 1)
            prefix = prompt_ids + reference[:step]
            with torch.inference_mode():
                fp32 = model(input_ids=torch.tensor([prefix])).logits[0, -1].numpy()
            ct2 = np.asarray(generator.forward_batch([tokenizer.convert_ids_to_tokens(prefix)]))[0, -1]
            entry["first_divergence"] = divergence(step, reference[step], ids[step], fp32, ct2, tokenizer)
        quality["greedy"][f"ctranslate2_{ct}"] = entry
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    rows = []
    for variant, threads in [(v, n) for v in ("float32", "dynamic_int8") for n in ([1] if args.quick else [1, 2])]:
        setup = TORCH_SETUP.format(dir=str(model_dir), threads=threads, quantize=variant != "float32", prompt=PROMPT)
        rows.append(
            {"variant": variant, "threads": threads, "greedy": timeit(setup, TORCH_GREEDY, {}, args, args.runs)}
        )
    modules = {"nn.Linear": sum(isinstance(m, torch.nn.Linear) for m in model.modules())}
    modules["Conv1D"] = sum(isinstance(m, Conv1D) for m in model.modules())
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    modules["quantized_by_quantize_dynamic"] = sum(isinstance(m, dynamic) for m in quantized.modules())
    ppl = {"float32": quality["perplexity"]["transformers_float32"], "dynamic_int8": perplexity(quantized, score_ids)}
    ct2 = ct2_alternatives(model_dir, lambda g: ctranslate2_perplexity(g, score_tokens), args)
    torch_alt = {"modules": modules, "rows": rows, "perplexity": ppl}
    return {"quality": quality, "alternatives": {"ct2": ct2, "torch_dynamic_quantization": torch_alt}}


def divergence(step: int, fp32_choice: int, ct2_choice: int, fp32: Any, ct2: Any, tokenizer: Any) -> dict[str, Any]:
    """Both engines' logits for the two competing tokens at the first step where greedy outputs differ."""
    import numpy as np

    def top2(logits: Any) -> list[dict[str, Any]]:
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = [int(i) for i in np.argsort(logits)[::-1][:2]]
        return [
            {"id": i, "token": tokenizer.decode([i]), "logit": float(logits[i]), "prob": float(probs[i])} for i in best
        ]

    return {
        "step": step,
        "float32_chose": tokenizer.decode([fp32_choice]),
        "ctranslate2_chose": tokenizer.decode([ct2_choice]),
        "float32_top2": top2(fp32),
        "float32_margin": float(fp32[fp32_choice] - fp32[ct2_choice]),
        "ctranslate2_top2": top2(ct2),
        "ctranslate2_margin": float(ct2[ct2_choice] - ct2[fp32_choice]),
    }


def bench_model(name: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from distilgpt2_api.engines.ctranslate2_engine import CT2_SUBDIR, prepared_compute_type

    idle = harness.wait_for_idle(args.wait_idle)
    systems = {}
    for system in SYSTEMS:
        harness.log(f"[{name}] {system}: cold start and warm requests")
        systems[system] = system_figures(system, model_dir, args)
    if args.llama_server:
        harness.log(f"[{name}] llama-server: warm requests")
        systems[PEER] = peer_figures(model_dir, args.llama_server, args.runs)
    harness.log(f"[{name}] quality and alternatives")
    prepared = prepared_compute_type(model_dir / CT2_SUBDIR)
    model = {"path": str(model_dir), "prepared_compute_type": prepared, "weights": params_read_per_token(model_dir)}
    model |= {"idle_before_rounds": [idle], "systems": systems} | quality_and_torch(
        model_dir, sorted({"int8", prepared}), args
    )
    harness.log(f"[{name}] the engine at 1 and 2 threads, for Lambda sizing")
    model["alternatives"]["engine_threads"] = [
        {"threads": threads, "compute_type": prepared}
        | service_warm(model_dir, "ctranslate2", args.runs, threads)["warm"]
        for threads in (1, 2)
    ]
    flags = harness.machine_info(())["cpu_flags"]
    bf16 = flags["avx512_bf16"] or flags["amx_bf16"]
    reason = (
        "CPU has avx512_bf16/amx_bf16; not measured"
        if bf16
        else "no avx512_bf16 or amx_bf16 in /proc/cpuinfo: bf16 matmuls would be emulated, so not tried"
    )
    model["alternatives"]["bf16"] = {"supported": bf16, "measured": False, "reason": reason}
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads((args.out / "results.json").read_text())
        add_derived(results)
        (args.out / "RESULTS.md").write_text(markdown(results))
        return 0
    started = time.time()
    results: dict[str, Any] = {
        "schema": 2,
        "quick": args.quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    results |= {
        "options": {"rounds": args.rounds, "runs": args.runs, "wait_idle_s": args.wait_idle},
        "machine": harness.machine_info(PACKAGES),
    }
    harness.log(f"memory bandwidth (idle: {harness.wait_for_idle(args.wait_idle)})")
    results |= {"memory_bandwidth": memory_bandwidth(args.quick), "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name in args.models:
            results["models"][name] = bench_model(name, prepare_model(name, args, Path(tmp)), args)
    results["machine"]["loadavg_end"] = harness.loadavg()
    results["duration_s"] = round(time.time() - started, 1)
    add_derived(results)
    harness.write_report(args.out, "results", results, markdown(results))
    harness.log(f"wrote {args.out / 'RESULTS.md'} and results.json in {results['duration_s']} s")
    return 0


# --- derived figures and RESULTS.md ------------------------------------------------------------------------

# Targets from the performance issue, all against the once-created pipeline in the same run.
WARM_SPEEDUP_MIN, COLD_RATIO_MAX, COLD_SMOLLM2_MAX_S, RSS_RATIO_MAX, QUALITY_TOLERANCE = 3.0, 0.5, 10.0, 0.6, 0.05
# AWS Lambda, x86, published prices: per GB-second and per request; one vCPU-equivalent per 1,769 MB.
LAMBDA_GB_SECOND_USD, LAMBDA_REQUEST_USD, LAMBDA_MB_PER_VCPU = 0.0000166667, 0.20 / 1_000_000, 1769
LAMBDA_MEMORY_SIZES_MB = (1024, 1769, 2048, 3008, 3538)
TITLES = {
    "tiny": "tiny GPT-2 (2 layers, random weights; --quick: timings are meaningless)",
    "distil": "distilgpt2-shaped GPT-2 (6 layers, 768 wide, 50,257 tokens, random weights)",
    "smollm2": "SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide, 49,152 tokens)",
}
LABELS = {"pipeline": "baseline: `pipeline()` created once", "llamacpp": "ENGINE=llamacpp (default)"}
LABELS |= {"ctranslate2": "ENGINE=ctranslate2", "transformers": "ENGINE=transformers"}
LABELS[PEER] = "llama-server, same GGUF (llama.cpp's own server)"


def bytes_per_param(compute: str) -> float:
    """Bytes of weight read per parameter: a GGUF type's block size (Q8_0: 34 bytes a 32), int8 arithmetic's int8
    weights (CTranslate2's float32 dequantizes)."""
    if compute.endswith(" GGUF"):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[compute.split()[0]]]
        return size / block
    return 1 if compute.startswith("int8") else 2 if compute.startswith("int16") else 4


def add_derived(results: dict[str, Any]) -> None:
    """Bandwidth bounds, quality differences, Lambda sizing and targets, from the measured figures."""
    bandwidth, results["targets"] = results["memory_bandwidth"]["copy_gbps_2_threads"] * 1e9, []
    for name, model in results["models"].items():
        systems, params, model["bounds"] = model["systems"], model["weights"]["params"], {}
        for system, figures in systems.items():
            per_token = params * bytes_per_param(figures["compute"])
            bound = {"bytes_per_token": per_token, "tokens_per_s_bound": bandwidth / per_token}
            bound["percent_of_bound"] = 100 * figures["warm"]["greedy"]["tokens_per_s"] / bound["tokens_per_s_bound"]
            model["bounds"][system] = bound
        ppl = model["quality"]["perplexity"]
        reference = ppl["transformers_float32"]
        model["quality"]["relative_difference"] = {k: v / reference - 1 for k, v in ppl.items() if v != reference}
        model["lambda_sizing"] = lambda_sizing(model)
        base, fast, ct2 = systems["pipeline"], systems[DEFAULT], systems["ctranslate2"]
        speedup = base["warm"]["greedy"]["median_s"] / fast["warm"]["greedy_via_handler"]["median_s"]
        versus_ct2 = ct2["warm"]["greedy"]["median_s"] / fast["warm"]["greedy"]["median_s"]
        cold, total = fast["cold_start"]["total_s"] / base["cold_start"]["total_s"], fast["cold_start"]["total_s"]
        rows = [
            (f"warm 50-token greedy over HTTP: ctranslate2 ÷ {DEFAULT} latency", versus_ct2, "≥ 1×"),
            (f"cold start to first response: {DEFAULT} ÷ pipeline", cold, f"≤ {COLD_RATIO_MAX:.0%}"),
        ]
        passed = [versus_ct2 >= 1.0, cold <= COLD_RATIO_MAX]
        if name in ("distil", "tiny"):  # GPT-2-shaped: the tutorial's model
            target = f"≥ {WARM_SPEEDUP_MIN:g}×"
            rows.append((f"warm 50-token greedy: pipeline ÷ {DEFAULT} via handler", speedup, target))
            passed.append(speedup >= WARM_SPEEDUP_MIN)
        if PEER in systems:
            versus_peer = systems[PEER]["warm"]["greedy"]["median_s"] / fast["warm"]["greedy"]["median_s"]
            rows.append((f"warm 50-token greedy over HTTP: {PEER} ÷ {DEFAULT} latency", versus_peer, "≥ 1×"))
            passed.append(versus_peer >= 1.0)
        if name == "smollm2":
            rows.append((f"cold start to first response, {DEFAULT} (s)", total, f"≤ {COLD_SMOLLM2_MAX_S:g} s"))
            passed.append(total <= COLD_SMOLLM2_MAX_S)
        if name in ("distil", "tiny"):
            rss = fast["peak_rss_mb"] / base["peak_rss_mb"]
            rows.append((f"peak RSS serving: {DEFAULT} ÷ pipeline", rss, f"≤ {RSS_RATIO_MAX:.0%}"))
            passed.append(rss <= RSS_RATIO_MAX)
        for (what, value, threshold), ok in zip(rows, passed, strict=True):
            results["targets"].append(
                {"model": name, "target": what, "value": value, "threshold": threshold, "passed": ok}
            )


def lambda_sizing(model: dict[str, Any]) -> dict[str, Any]:
    """Estimated duration and cost per 1,000 requests at several Lambda memory sizes, from 1- and 2-thread latency.

    Lambda gives M/1769 vCPUs of CPU time. One thread needs one vCPU: duration t1 / min(1, share). Two threads keep
    two vCPUs busy: duration t2 * max(1, 2 / share). The cheaper of the two thread counts is shown.
    """
    threads = {row["threads"]: row for row in model["alternatives"]["engine_threads"]}
    engine, rows = model["systems"]["ctranslate2"], []
    for memory in LAMBDA_MEMORY_SIZES_MB:
        share = memory / LAMBDA_MB_PER_VCPU
        row: dict[str, Any] = {"memory_mb": memory, "vcpu_share": share, "fits": memory >= 1.25 * engine["peak_rss_mb"]}
        for kind in ("greedy", "sampled"):
            stretch = {1: 1 / min(1.0, share), 2: max(1.0, 2 / share)}
            options = {n: threads[n][kind]["median_s"] * stretch[n] for n in threads}
            best = min(options, key=lambda n: options[n])
            usd = 1000 * (options[best] * memory / 1024 * LAMBDA_GB_SECOND_USD + LAMBDA_REQUEST_USD)
            row[kind] = {"threads": best, "duration_s": options[best], "usd_per_1000": usd}
        row["cold_start_usd"] = engine["cold_start"]["total_s"] * memory / 1024 * LAMBDA_GB_SECOND_USD
        rows.append(row)
    latency = {n: {k: threads[n][k]["median_s"] for k in ("greedy", "sampled")} for n in sorted(threads)}
    return {"latency_by_threads": latency, "peak_rss_mb": engine["peak_rss_mb"], "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    """RESULTS.md: bench/RESULTS.md.j2 over the results and their derived figures."""
    bandwidth = results["memory_bandwidth"]
    gbps = [f"{bandwidth[f'copy_gbps_{n}']:.1f} GB/s ({n.replace('_', ' ')})" for n in ("1_thread", "2_threads")]
    method = f"{', '.join(gbps)}: {bandwidth['method']}, {bandwidth['array_mb']} MB arrays"
    machine = harness.machine_section(results["machine"], [["memory bandwidth", method]]).rstrip()
    lambda_ = {"mb_per_vcpu": LAMBDA_MB_PER_VCPU, "gb_second_usd": LAMBDA_GB_SECOND_USD}
    context = {"machine_section": machine, "titles": TITLES, "labels": LABELS, "tolerance": QUALITY_TOLERANCE}
    return harness.render("RESULTS.md.j2", results | context | {"lambda_": lambda_})


if __name__ == "__main__":
    raise SystemExit(main())
