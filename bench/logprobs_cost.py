"""What logprobs cost per generated token, side by side in one process.

    python bench/logprobs_cost.py --model-dir models/default --out bench/LOGPROBS.md

For each engine: the same greedy request (MAX_NEW_TOKENS tokens, no EOS stop in the way: the prompt
asks for a long answer) without logprobs, with the chosen token's logprob (logprobs=0: OpenAI's
`logprobs: true`) and with 5 alternatives (`top_logprobs: 5`), interleaved over ROUNDS rounds so
machine noise hits every variant alike. Reports the median milliseconds per token and the ratio to
no logprobs. THREADS=1, as the service runs on Lambda.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from distilgpt2_api.core.request import GenerationRequest
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.engines import load_engine

MAX_NEW_TOKENS = 100
ROUNDS = 7
VARIANTS = {"none": None, "logprob": 0, "top 5": 5}
PROMPT = "Write a long story about a dragon who learns to cook. Once upon a time"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def measure(model_dir: Path, engine_name: str) -> dict[str, float]:
    """Median ms per generated token for each variant."""
    scheduler = Scheduler(load_engine(model_dir, engine_name, threads=1))  # type: ignore[arg-type]
    requests = {
        name: GenerationRequest(prompt=PROMPT, max_new_tokens=MAX_NEW_TOKENS, logprobs=logprobs)
        for name, logprobs in VARIANTS.items()
    }
    scheduler.generate_blocking(requests["top 5"])  # warm-up
    per_token: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(ROUNDS):
        for name, request in requests.items():
            started = time.perf_counter()
            result = scheduler.generate_blocking(request)
            per_token[name].append((time.perf_counter() - started) * 1000 / result.completion_tokens)
    scheduler.engine.close()
    return {name: statistics.median(values) for name, values in per_token.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--engines", nargs="+", default=["ctranslate2", "transformers"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [
        "| engine | no logprobs | chosen token's logprob | + 5 alternatives |",
        "| --- | ---: | ---: | ---: |",
    ]
    for engine_name in args.engines:
        ms = measure(args.model_dir, engine_name)
        base = ms["none"]
        cells = [f"{ms[name]:.2f} ms ({ms[name] / base:.2f}×)" for name in VARIANTS]
        rows.append(f"| {engine_name} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    report = "\n".join(
        [
            "# What logprobs cost",
            "",
            f"`python bench/logprobs_cost.py --model-dir {args.model_dir}`: milliseconds per generated token "
            f"(median of {ROUNDS} interleaved rounds, {MAX_NEW_TOKENS} greedy tokens, THREADS=1), and the ratio "
            f"to no logprobs measured in the same run. CPU: {cpu_name()}.",
            "",
            *rows,
            "",
        ]
    )
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
