"""One measurement in a fresh process, for bench/bench.py: `python bench/worker.py MODE ARGS.json OUT.json`.

Cold start, peak RSS and thread settings are per process, so every figure that depends on them is
taken here, in a process that did nothing else. Results go to OUT.json: stdout belongs to the
service's JSON logs. Modes: pipeline, engine, ct2_alt, quality.
"""

from __future__ import annotations

import time

T_START = time.time()  # first thing: interpreter start-up ends here (the parent knows the spawn time)

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time"
NEW_TOKENS = 50
SAMPLED_SEQUENCES = 5
TOP_K = 50  # the tutorial route's sampling, and transformers' default


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). ru_maxrss is not used: Linux carries it over from the parent
    through fork and exec, so every worker would report at least the bench's own ~400 MB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed_runs(call: Callable[[], int], runs: int) -> dict[str, Any]:
    """Time `call` (which returns the tokens it generated) `runs` times: median seconds and tokens/s."""
    seconds: list[float] = []
    tokens: list[int] = []
    for _ in range(runs):
        started = time.perf_counter()
        tokens.append(call())
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return {
        "runs_s": seconds,
        "median_s": median,
        "tokens": tokens,
        "tokens_per_s": statistics.median(tokens) / median,
    }


class LambdaContext:
    """The attributes of the Lambda context that the service reads."""

    aws_request_id = "00000000-0000-0000-0000-000000000000"
    function_name = "distilgpt2-api-bench"
    memory_limit_in_mb = 3008
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:distilgpt2-api-bench"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def run_pipeline(args: dict[str, Any]) -> dict[str, Any]:
    """The tutorial's way: a transformers pipeline created once, called per request."""
    from transformers import pipeline

    t_import = time.time()
    pipe = pipeline("text-generation", model=args["model_dir"])
    t_load = time.time()
    pipe(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
    t_first = time.time()
    prompt_tokens = len(pipe.tokenizer(PROMPT)["input_ids"])

    def generated(outputs: list[dict[str, str]]) -> int:
        # The pipeline returns text: count its new tokens by tokenizing it again (close, not exact).
        return sum(len(pipe.tokenizer(o["generated_text"])["input_ids"]) - prompt_tokens for o in outputs)

    warm = {
        "greedy": timed_runs(lambda: generated(pipe(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)), args["runs"]),
        "sampled": timed_runs(
            lambda: generated(
                pipe(
                    PROMPT,
                    max_new_tokens=NEW_TOKENS,
                    do_sample=True,
                    top_k=TOP_K,
                    num_return_sequences=SAMPLED_SEQUENCES,
                )
            ),
            args["runs"],
        ),
    }
    rss, ru_max = peak_rss_mb(), ru_maxrss_mb()  # before the per-request pipeline below loads a second copy
    started = time.perf_counter()
    pipeline("text-generation", model=args["model_dir"])(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
    per_request = time.perf_counter() - started
    import torch

    return {
        "times": {"import": t_import, "load": t_load, "first_response": t_first},
        "warm": warm,
        "peak_rss_mb": rss,
        "ru_maxrss_mb": ru_max,
        "per_request_pipeline_s": per_request,
        "threads": torch.get_num_threads(),
        "compute": "float32 (torch)",
    }


def run_engine(args: dict[str, Any]) -> dict[str, Any]:
    """The service as Lambda runs it: import handler (loads the model), then a first POST /generate."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # handler.py and tests/event_factory.py
    import importlib

    # Everything but the model load: the web stack, Lambda glue and the chosen engine's library.
    import aws_lambda_powertools  # noqa: F401
    import fastapi  # noqa: F401
    import mangum  # noqa: F401

    import distilgpt2_api.aws_lambda.events  # noqa: F401
    import distilgpt2_api.http_api.app_factory  # noqa: F401

    importlib.import_module(f"distilgpt2_api.engines.{os.environ['ENGINE']}_engine")
    from dataclasses import replace

    from distilgpt2_api.core.request import GenerationRequest, SamplingParams
    from distilgpt2_api.settings import get_settings

    from event_factory import http_api_event, response_json

    t_import = time.time()
    import handler  # importing distilgpt2_api.api loads the model: the Lambda cold start

    t_load = time.time()
    context = LambdaContext()

    def via_handler() -> int:
        event = http_api_event("POST", "/generate", body={"prompt": PROMPT, "max_new_tokens": NEW_TOKENS})
        response = handler.handler(event, context)
        if response["statusCode"] != 200:
            raise RuntimeError(f"POST /generate answered {response['statusCode']}: {response['body'][:500]}")
        return int(response_json(response)["usage"]["completion_tokens"])

    first_tokens = via_handler()
    t_first = time.time()
    generator = handler.app.state.scheduler

    def in_process(request: GenerationRequest) -> Callable[[], int]:
        return lambda: generator.generate_blocking(request).completion_tokens

    greedy = GenerationRequest(prompt=PROMPT, max_new_tokens=NEW_TOKENS)
    sampling = SamplingParams(do_sample=True, top_k=TOP_K)
    sampled = GenerationRequest(PROMPT, NEW_TOKENS, n=SAMPLED_SEQUENCES, sampling=sampling)
    seeded = GenerationRequest(PROMPT, NEW_TOKENS, n=SAMPLED_SEQUENCES, sampling=replace(sampling, seed=1234))
    runs = args["runs"]
    warm = {
        "greedy": timed_runs(in_process(greedy), runs),
        "sampled": timed_runs(in_process(sampled), runs),
        "sampled_seeded": timed_runs(in_process(seeded), runs),
        "handler_greedy": timed_runs(via_handler, runs),
    }
    engine = generator.engine
    return {
        "times": {"import": t_import, "load": t_load, "first_response": t_first},
        "first_response_tokens": first_tokens,
        "warm": warm,
        "peak_rss_mb": peak_rss_mb(),
        "ru_maxrss_mb": ru_maxrss_mb(),
        "threads": get_settings().threads,
        "compute": str(getattr(engine, "compute_type", "float32 (torch)")),
    }


def ct2_greedy(generator: Any, prompt: list[str]) -> int:
    # min_length pins the length: every configuration does exactly NEW_TOKENS steps.
    result = generator.generate_batch(
        [prompt], max_length=NEW_TOKENS, min_length=NEW_TOKENS, sampling_topk=1, include_prompt_in_result=False
    )
    return len(result[0].sequences_ids[0])


def run_ct2_alt(args: dict[str, Any]) -> dict[str, Any]:
    """CTranslate2 alternatives on the converted model: compute types x threads (backend set by the parent)."""
    import ctranslate2
    from tokenizers import Tokenizer

    from distilgpt2_api.model_store.quality import ctranslate2_perplexity

    model_dir = Path(args["model_dir"])
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompt = [tokenizer.id_to_token(i) for i in tokenizer.encode(PROMPT).ids]
    supported = sorted(ctranslate2.get_supported_compute_types("cpu"))
    rows: list[dict[str, Any]] = []
    for compute_type in args["compute_types"]:
        if compute_type not in supported:
            rows.append({"compute_type": compute_type, "skipped": f"not supported here (supported: {supported})"})
            continue
        for threads in args["threads"]:
            rss_before = current_rss_mb()
            started = time.perf_counter()
            generator = ctranslate2.Generator(
                str(model_dir / args["ct2_subdir"]), device="cpu", compute_type=compute_type, intra_threads=threads
            )
            load_s = time.perf_counter() - started
            row: dict[str, Any] = {
                "compute_type": compute_type,
                "resolved_compute_type": generator.compute_type,
                "threads": threads,
                "load_s": load_s,
                "rss_added_mb": current_rss_mb() - rss_before,
            }
            ct2_greedy(generator, prompt)  # warm-up
            row["greedy"] = timed_runs(lambda g=generator: ct2_greedy(g, prompt), args["runs"])
            row["perplexity"] = ctranslate2_perplexity(generator, args["score_tokens"])
            rows.append(row)
            del generator
    result: dict[str, Any] = {"backend": args["backend"], "supported": supported, "rows": rows}
    if args.get("engine_threads"):
        result["engine_threads"] = engine_threads(model_dir, args["threads"], args["runs"])
    return result


def engine_threads(model_dir: Path, thread_counts: list[int], runs: int) -> list[dict[str, Any]]:
    """The service's CTranslate2 engine (prepared compute type) at each thread count: Lambda sizing."""
    from distilgpt2_api.core.request import GenerationRequest, SamplingParams
    from distilgpt2_api.core.scheduler import Scheduler
    from distilgpt2_api.engines import load_engine

    rows = []
    greedy = GenerationRequest(prompt=PROMPT, max_new_tokens=NEW_TOKENS)
    sampling = SamplingParams(do_sample=True, top_k=TOP_K)
    sampled = GenerationRequest(PROMPT, NEW_TOKENS, n=SAMPLED_SEQUENCES, sampling=sampling)
    for threads in thread_counts:
        engine = load_engine(model_dir, "ctranslate2", threads=threads)
        generator = Scheduler(engine)
        generator.generate_blocking(greedy)  # warm-up
        rows.append(
            {
                "threads": threads,
                "compute_type": str(getattr(engine, "compute_type", "int8")),
                "greedy": timed_runs(lambda g=generator: g.generate_blocking(greedy).completion_tokens, runs),
                "sampled": timed_runs(lambda g=generator: g.generate_blocking(sampled).completion_tokens, runs),
            }
        )
        del generator, engine
    return rows


def torch_alternatives(
    model: Any, tokenizer: Any, score_ids: list[int], threads: list[int], runs: int
) -> dict[str, Any]:
    """torch fp32 vs dynamic int8 quantization of nn.Linear (`model.generate`, exactly 50 greedy tokens)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    from distilgpt2_api.model_store.quality import perplexity

    inputs = tokenizer(PROMPT, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def greedy(m: Any) -> int:
        with torch.inference_mode():
            out = m.generate(
                **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad
            )
        return int(out.shape[1] - inputs["input_ids"].shape[1])

    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    conv1d = sum(isinstance(m, Conv1D) for m in model.modules())
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    replaced = sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.modules())
    rows = []
    for name, candidate in (("float32", model), ("dynamic_int8", quantized)):
        for count in threads:
            torch.set_num_threads(count)
            greedy(candidate)  # warm-up
            timed = timed_runs(lambda c=candidate: greedy(c), runs)
            rows.append({"variant": name, "threads": count, "greedy": timed})
    torch.set_num_threads(max(threads))
    return {
        "modules": {"nn.Linear": linear, "Conv1D": conv1d, "quantized_by_quantize_dynamic": replaced},
        "rows": rows,
        "perplexity": {
            "float32": perplexity(model, score_ids),
            "dynamic_int8": perplexity(quantized, score_ids),
        },
    }


def run_quality(args: dict[str, Any]) -> dict[str, Any]:
    """torch alternatives (timed first, before CTranslate2's own thread pool exists in this process), then
    perplexity of a fixed paragraph and a 20-token greedy continuation: transformers fp32 vs CTranslate2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilgpt2_api.model_store.quality import ctranslate2_perplexity, model_context_length, perplexity

    model_dir = Path(args["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    score_ids = list(tokenizer(args["paragraph"])["input_ids"])[: model_context_length(model)]
    torch_alt = torch_alternatives(model, tokenizer, score_ids, args["torch_threads"], args["runs"])

    import ctranslate2
    import numpy as np

    score_tokens = tokenizer.convert_ids_to_tokens(score_ids)  # the same tokenization for both engines
    eos = tokenizer.eos_token_id
    result: dict[str, Any] = {
        "scored_tokens": len(score_ids) - 1,  # the first token has no prediction
        "score_ids": score_ids,
        "score_tokens": score_tokens,
        "perplexity": {"transformers_float32": perplexity(model, score_ids)},
        "greedy": {},
        "torch_dynamic_quantization": torch_alt,
    }
    prompt_ids = list(tokenizer(args["greedy_prompt"])["input_ids"])
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=args["greedy_tokens"], do_sample=False, pad_token_id=eos
        )
    reference = out[0, len(prompt_ids) :].tolist()
    result["greedy"]["transformers_float32"] = {"ids": reference, "text": tokenizer.decode(reference)}
    prompt_tokens = tokenizer.convert_ids_to_tokens(prompt_ids)
    for compute_type in args["compute_types"]:
        generator = ctranslate2.Generator(str(model_dir / args["ct2_subdir"]), device="cpu", compute_type=compute_type)
        result["perplexity"][f"ctranslate2_{compute_type}"] = ctranslate2_perplexity(generator, score_tokens)
        ids = list(
            generator.generate_batch(
                [prompt_tokens],
                max_length=args["greedy_tokens"],
                sampling_topk=1,
                include_prompt_in_result=False,
                end_token=[eos],
                return_end_token=True,
            )[0].sequences_ids[0]
        )
        entry: dict[str, Any] = {"ids": ids, "text": tokenizer.decode(ids), "identical": ids == reference}
        step = next((i for i, (a, b) in enumerate(zip(ids, reference, strict=False)) if a != b), None)
        if step is not None:
            prefix = prompt_ids + reference[:step]
            with torch.inference_mode():
                fp32_logits = model(input_ids=torch.tensor([prefix])).logits[0, -1].numpy()
            ct2_logits = np.asarray(generator.forward_batch([tokenizer.convert_ids_to_tokens(prefix)]))[0, -1]
            entry["first_divergence"] = divergence(step, reference[step], ids[step], fp32_logits, ct2_logits, tokenizer)
        result["greedy"][f"ctranslate2_{compute_type}"] = entry
        del generator
    return result


def divergence(step: int, fp32_choice: int, ct2_choice: int, fp32: Any, ct2: Any, tokenizer: Any) -> dict[str, Any]:
    """Both engines' logits for the two competing tokens at the first step where greedy outputs differ."""
    import numpy as np

    def top2(logits: Any) -> list[dict[str, Any]]:
        best = np.argsort(logits)[::-1][:2]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return [
            {"id": int(i), "token": tokenizer.decode([int(i)]), "logit": float(logits[i]), "prob": float(probs[i])}
            for i in best
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


MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pipeline": run_pipeline,
    "engine": run_engine,
    "ct2_alt": run_ct2_alt,
    "quality": run_quality,
}


def main() -> None:
    mode, args_file, out_file = sys.argv[1:4]
    result = MODES[mode](json.loads(Path(args_file).read_text()))
    result["t_start"] = T_START
    Path(out_file).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
