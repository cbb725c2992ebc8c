"""Structured output on the llama.cpp engine: what a grammar costs per token, per new schema, and what it buys.

    python bench/structured.py --model-dir DIR [--parts speed,compile,first,validity] [--rounds 5] [--out bench]

One server, ours (`uvicorn distilgpt2_api.api:app`, ENGINE=llamacpp, THREADS=1, MAX_BATCH_SIZE=8, on loopback,
started as bench/step_loop.py starts it), asked through /v1/chat/completions with and without `response_format`
(`json_schema`). The model should be a chat model (SmolLM2-135M-Instruct: the prompts ask for JSON in words).
Constrained and free requests alternate request by request, round by round (A/B/A/B), and medians are reported,
so that other work on the machine weighs on both alike; the CPU other processes used meanwhile is recorded per
part. Tokens are counted from each response's `usage`.

Parts:
  speed     decode speed with and without the grammar: for a small schema (flat, four fields) and a nested one
            (objects in an array in an object), a chat prompt asking for that JSON, greedy, --max-tokens (100),
            streamed, once with `response_format` and once without, each round. Decode tokens/s (tokens after
            the first ÷ time after the first) and end-to-end tokens/s (tokens ÷ total time), medians over
            rounds; the target is constrained decode ≥ 80 % of free.
  compile   time to first token (streamed, 4 tokens) of the same chat prompt with a schema never seen before
            (the schema made unique per round by a description, so the compiled-grammar cache misses), then the
            same schema again (a cache hit), then no schema, for the small and the nested schema. The prompt is
            the same throughout, so the prefix cache serves every request alike: what differs is the grammar.
  first     the one-time cost: a fresh server per round, warmed by one free request, then its first structured
            request (the tokenizer's index for llguidance is built then, on first use) and a second one with
            another new schema; first minus second is the index cost. Also the fresh server's spawn-to-ready.
  validity  for several schemas (nested objects, arrays with minItems/maxItems, enums, bounded numbers, optional
            fields, anyOf), --samples (100) answers each at temperature 1 (n = 8 per request, a seed of its own
            per request), --validity-max-tokens (200): finish_reason stop / length, and how many stopped answers
            parse and validate (jsonschema) — every one must. The same prompts without `response_format`
            (--free-samples answers each, --free-max-tokens): how many answers are, as a whole, JSON valid for
            the schema, and how many contain such JSON (the first JSON value in the text, e.g. in a code fence).

Writes STRUCTURED.md and structured.json into --out (`--render` rewrites the markdown from the JSON).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "src")]

import bench_report  # noqa: E402 - table
import load  # noqa: E402 - Server, free_port
import step_loop  # noqa: E402 - Spec, our_env, stream, complete, http, ForeignLoad, top_processes, log, median

import bench  # noqa: E402 - machine_info

PARTS = ("speed", "compile", "first", "validity")
PACKAGES = ("llama-cpp-python", "llguidance", "jsonschema", "tokenizers", "numpy", "fastapi", "uvicorn", "httpx")
CHAT = "/v1/chat/completions"
TTFT_TOKENS = 4
BATCH_N = 8  # answers per validity request (MAX_RETURN_SEQUENCES is 8 by default)
SPEED_RATIO_MIN = 0.8  # target: constrained decode tokens/s ≥ 80 % of free

# --- schemas and prompts ----------------------------------------------------------------------------------

NAME = {"type": "string", "maxLength": 40}

SMALL = {
    "type": "object",
    "properties": {"name": NAME, "age": {"type": "integer"}, "city": NAME, "email": NAME},
    "required": ["name", "age", "city", "email"],
    "additionalProperties": False,
}

NESTED = {
    "type": "object",
    "properties": {
        "team": NAME,
        "founded": {"type": "integer"},
        "members": {
            "type": "array",
            "minItems": 2,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "name": NAME,
                    "role": NAME,
                    "contact": {
                        "type": "object",
                        "properties": {"email": NAME, "phone": NAME},
                        "required": ["email", "phone"],
                        "additionalProperties": False,
                    },
                },
                "required": ["name", "role", "contact"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["team", "founded", "members"],
    "additionalProperties": False,
}

SPEED_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "small": (
        SMALL,
        "Invent a person and describe them as a JSON object with the fields name, age, city and email. "
        "Answer with the JSON only.",
    ),
    "nested": (
        NESTED,
        "Invent a small software team and describe it as a JSON object: team (its name), founded (a year) and "
        "members, a list of two or three people, each with name, role and contact (an object with email and "
        "phone). Answer with the JSON only.",
    ),
}

VALIDITY_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "nested objects": (
        {
            "type": "object",
            "properties": {
                "name": NAME,
                "address": {
                    "type": "object",
                    "properties": {
                        "street": NAME,
                        "city": NAME,
                        "geo": {
                            "type": "object",
                            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                            "required": ["lat", "lon"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["street", "city", "geo"],
                    "additionalProperties": False,
                },
            },
            "required": ["name", "address"],
            "additionalProperties": False,
        },
        "Give a person's name and address as JSON: name, and address with street, city and geo (lat and lon).",
    ),
    "arrays minItems/maxItems": (
        {
            "type": "object",
            "properties": {
                "title": NAME,
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 2, "maxItems": 4},
                "ratings": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
            },
            "required": ["title", "tags", "ratings"],
            "additionalProperties": False,
        },
        "Describe a film as JSON: title, tags (two to four words) and ratings (one to three whole numbers).",
    ),
    "enums": (
        {
            "type": "object",
            "properties": {
                "color": {"enum": ["red", "green", "blue", "yellow"]},
                "size": {"enum": ["S", "M", "L", "XL"]},
                "in_stock": {"type": "boolean"},
            },
            "required": ["color", "size", "in_stock"],
            "additionalProperties": False,
        },
        "Describe a T-shirt in a shop as JSON: color (red, green, blue or yellow), size (S, M, L or XL) and "
        "in_stock (true or false).",
    ),
    "bounded numbers": (
        {
            "type": "object",
            "properties": {
                "temperature_c": {"type": "number", "minimum": -40, "maximum": 50},
                "humidity": {"type": "integer", "minimum": 0, "maximum": 100},
                "wind_kmh": {"type": "number", "minimum": 0, "maximum": 200},
            },
            "required": ["temperature_c", "humidity", "wind_kmh"],
            "additionalProperties": False,
        },
        "Give today's weather as JSON: temperature_c (-40 to 50), humidity (0 to 100) and wind_kmh (0 to 200).",
    ),
    "optional fields": (
        {
            "type": "object",
            "properties": {
                "title": NAME,
                "author": NAME,
                "year": {"type": "integer"},
                "isbn": NAME,
                "subtitle": NAME,
            },
            "required": ["title", "author"],
            "additionalProperties": False,
        },
        "Describe a book as JSON: title and author, and if you know them year, isbn and subtitle.",
    ),
    "anyOf": (
        {
            "type": "object",
            "properties": {
                "shape": {
                    "anyOf": [
                        {
                            "type": "object",
                            "properties": {"kind": {"const": "circle"}, "radius": {"type": "number"}},
                            "required": ["kind", "radius"],
                            "additionalProperties": False,
                        },
                        {
                            "type": "object",
                            "properties": {
                                "kind": {"const": "rectangle"},
                                "width": {"type": "number"},
                                "height": {"type": "number"},
                            },
                            "required": ["kind", "width", "height"],
                            "additionalProperties": False,
                        },
                    ]
                },
                "label": {"anyOf": [NAME, {"type": "null"}]},
            },
            "required": ["shape", "label"],
            "additionalProperties": False,
        },
        "Describe a shape as JSON: shape (a circle with radius, or a rectangle with width and height, with its "
        "kind) and label (a string or null).",
    ),
}


def unique(schema: dict[str, Any], tag: str) -> dict[str, Any]:
    """`schema` with a description of its own: the same answers, another cache key."""
    return copy.deepcopy(schema) | {"description": f"variant {tag}"}


def inline(text: str) -> str:
    """`text` on one line, fit for a markdown code span."""
    return " ".join(text.replace("`", "'").split())


def request(prompt: str, schema: dict[str, Any] | None, tokens: int, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens}
    out |= {"temperature": 0} | fields
    if schema is not None:
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    return out


# --- the server -----------------------------------------------------------------------------------------


def spec(model_dir: Path) -> step_loop.Spec:
    return step_loop.Spec("ours-llamacpp", model_dir, engine="llamacpp")


def start(model_dir: Path, workdir: Path) -> load.Server:
    return step_loop.start(spec(model_dir), Path("-"), workdir)


# --- parts ----------------------------------------------------------------------------------------------


def part_speed(server: load.Server, rounds: int, tokens: int) -> dict[str, Any]:
    rows: dict[str, dict[str, list[step_loop.Streamed]]] = {c: {"constrained": [], "free": []} for c in SPEED_CASES}
    with step_loop.http(server) as client:
        for schema, prompt in SPEED_CASES.values():  # warm-up, and the grammars compiled
            step_loop.stream(client, CHAT, request(prompt, schema, tokens))
            step_loop.stream(client, CHAT, request(prompt, None, tokens))
        for round_ in range(rounds):
            for case, (schema, prompt) in SPEED_CASES.items():
                rows[case]["constrained"].append(step_loop.stream(client, CHAT, request(prompt, schema, tokens)))
                rows[case]["free"].append(step_loop.stream(client, CHAT, request(prompt, None, tokens)))
                c, f = rows[case]["constrained"][-1], rows[case]["free"][-1]
                step_loop.log(
                    f"speed round {round_ + 1} {case}: constrained {c.decode_tokens_per_s:.1f} tok/s "
                    f"({c.completion_tokens} tokens), free {f.decode_tokens_per_s:.1f} ({f.completion_tokens})"
                )
    out: dict[str, Any] = {}
    median = step_loop.median
    for case, sides in rows.items():
        figures: dict[str, Any] = {}
        for side, values in sides.items():
            figures[side] = {
                "requests": len(values),
                "completion_tokens": median([r.completion_tokens for r in values]),
                "decode_tokens_per_s": round(median([r.decode_tokens_per_s for r in values]), 1),
                "decode_tokens_per_s_each": [round(r.decode_tokens_per_s, 1) for r in values],
                "end_to_end_tokens_per_s": round(median([r.completion_tokens / r.total_s for r in values]), 1),
                "ttft_ms": round(1000 * median([r.ttft_s for r in values]), 1),
                "total_ms": round(1000 * median([r.total_s for r in values]), 1),
                "text": values[-1].text,
            }
        # Per round: constrained ÷ free of that round, then the median of the ratios (pairs measured together).
        ratios = [
            c.decode_tokens_per_s / f.decode_tokens_per_s
            for c, f in zip(sides["constrained"], sides["free"], strict=True)
            if f.decode_tokens_per_s > 0
        ]
        figures["decode_ratio"] = round(median(ratios), 3)
        figures["decode_ratio_each"] = [round(r, 3) for r in ratios]
        out[case] = figures
    return out


def part_compile(server: load.Server, rounds: int, run_tag: str) -> dict[str, Any]:
    kinds = ("new schema", "cached schema", "no schema")
    rows: dict[str, dict[str, list[step_loop.Streamed]]] = {c: {k: [] for k in kinds} for c in SPEED_CASES}
    with step_loop.http(server) as client:
        for case, (schema, prompt) in SPEED_CASES.items():  # warm-up: the prompt cached, the tokenizer indexed
            step_loop.stream(client, CHAT, request(prompt, unique(schema, f"{run_tag} warm {case}"), TTFT_TOKENS))
            step_loop.stream(client, CHAT, request(prompt, None, TTFT_TOKENS))
        for round_ in range(rounds):
            for case, (schema, prompt) in SPEED_CASES.items():
                fresh = unique(schema, f"{run_tag} round {round_} {case}")
                for kind, body in (
                    ("new schema", request(prompt, fresh, TTFT_TOKENS)),
                    ("cached schema", request(prompt, fresh, TTFT_TOKENS)),
                    ("no schema", request(prompt, None, TTFT_TOKENS)),
                ):
                    rows[case][kind].append(step_loop.stream(client, CHAT, body))
                step_loop.log(
                    f"compile round {round_ + 1} {case}: "
                    + ", ".join(f"{k} {1000 * v[-1].ttft_s:.0f} ms" for k, v in rows[case].items())
                )
    out: dict[str, Any] = {}
    for case, by_kind in rows.items():
        figures: dict[str, Any] = {
            kind: {
                "ttft_ms": round(1000 * step_loop.median([r.ttft_s for r in values]), 1),
                "ttft_ms_each": [round(1000 * r.ttft_s, 1) for r in values],
                "cached_tokens": step_loop.median([r.cached_tokens for r in values]),
                "prompt_tokens": step_loop.median([r.prompt_tokens for r in values]),
            }
            for kind, values in by_kind.items()
        }
        new, hit = by_kind["new schema"], by_kind["cached schema"]
        figures["compile_ms"] = round(
            1000 * step_loop.median([a.ttft_s - b.ttft_s for a, b in zip(new, hit, strict=True)]), 1
        )
        out[case] = figures
    return out


def in_process_compile(model_dir: Path, rounds: int, run_tag: str) -> dict[str, Any]:
    """The same work without HTTP, in this process: the tokenizer's index (GrammarCache), each schema compiled
    fresh (`rounds` variants), and the first mask of a compiled one."""
    from distilgpt2_api.core.grammar import Grammar, GrammarCache  # noqa: PLC0415

    config = json.loads((model_dir / "config.json").read_text())
    eos = config.get("eos_token_id")
    eos_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]
    tokenizer_json = (model_dir / "tokenizer.json").read_text()
    began = time.perf_counter()
    cache = GrammarCache(tokenizer_json, eos_ids)
    out: dict[str, Any] = {"index_ms": round(1000 * (time.perf_counter() - began), 1)}
    vocab = int(config.get("vocab_size", 0))
    for case, (schema, _) in SPEED_CASES.items():
        compile_s, mask_s = [], []
        for round_ in range(rounds):
            grammar = Grammar.json_schema(unique(schema, f"{run_tag} in-process {round_} {case}"))
            began = time.perf_counter()
            constraint = cache.constraint(grammar)
            compile_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            constraint.allowed(vocab)
            mask_s.append(time.perf_counter() - began)
        out[case] = {
            "compile_ms": round(1000 * step_loop.median(compile_s), 2),
            "first_mask_ms": round(1000 * step_loop.median(mask_s), 2),
        }
    return out


def part_first(model_dir: Path, rounds: int, workdir: Path) -> dict[str, Any]:
    rows: list[dict[str, float]] = []
    schema, prompt = SPEED_CASES["small"]
    for round_ in range(rounds):
        spawned = time.perf_counter()
        server = start(model_dir, workdir)
        try:
            server.wait_ready(300)
            ready = time.perf_counter() - spawned
            gauge = step_loop.ForeignLoad({"ours": server})
            with step_loop.http(server) as client:
                step_loop.stream(client, CHAT, request(prompt, None, TTFT_TOKENS))  # warm: model, prompt cache
                none = step_loop.stream(client, CHAT, request(prompt, None, TTFT_TOKENS))
                first = step_loop.stream(client, CHAT, request(prompt, unique(schema, f"first {round_}"), TTFT_TOKENS))
                second = step_loop.stream(
                    client, CHAT, request(prompt, unique(schema, f"second {round_}"), TTFT_TOKENS)
                )
            rows.append(
                {
                    "spawn_to_ready_s": ready,
                    "no_schema_ttft_ms": 1000 * none.ttft_s,
                    "first_structured_ttft_ms": 1000 * first.ttft_s,
                    "second_new_schema_ttft_ms": 1000 * second.ttft_s,
                    "foreign_load_cores": gauge.cores(),
                }
            )
            step_loop.log(f"first round {round_ + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in rows[-1].items()))
        finally:
            server.stop()
    out: dict[str, Any] = {
        key: round(step_loop.median([r[key] for r in rows]), 2 if key.endswith("_s") else 1) for key in rows[0]
    }
    out["index_ms"] = round(
        step_loop.median([r["first_structured_ttft_ms"] - r["second_new_schema_ttft_ms"] for r in rows]), 1
    )
    out["rounds"] = len(rows)
    out["each"] = [{k: round(v, 2) for k, v in r.items()} for r in rows]
    return out


def first_json(text: str) -> tuple[bool, Any]:
    """The first JSON object or array in `text` (a code fence's, or anywhere), if any decodes."""
    decoder = json.JSONDecoder()
    for i, char in enumerate(text):
        if char in "{[":
            try:
                return True, decoder.raw_decode(text, i)[0]
            except ValueError:
                continue
    return False, None


def judge(text: str, validator: Any) -> dict[str, bool]:
    """Whether `text` is, as a whole, JSON valid for the schema; whether it contains such JSON."""
    try:
        whole, value = True, json.loads(text)
    except ValueError:
        whole, value = False, None
    whole_valid = whole and validator.is_valid(value)
    found, inner = (whole, value) if whole_valid else first_json(text)
    return {
        "parses": whole,
        "valid": whole_valid,
        "contains_valid": whole_valid or (found and validator.is_valid(inner)),
    }


def part_validity(
    server: load.Server, samples: int, free_samples: int, tokens: int, free_tokens: int
) -> dict[str, Any]:
    import jsonschema  # noqa: PLC0415 - only this part needs it

    out: dict[str, Any] = {}
    with step_loop.http(server) as client:
        for case_index, (case, (schema, prompt)) in enumerate(VALIDITY_CASES.items()):
            validator = jsonschema.Draft202012Validator(schema)
            sides: dict[str, dict[str, Any]] = {}
            asked = {"constrained": samples, "free": free_samples}
            answers: dict[str, list[tuple[str, str]]] = {"constrained": [], "free": []}
            started = {"constrained": 0.0, "free": 0.0}
            for batch in range(math.ceil(max(samples, free_samples) / BATCH_N)):
                for side in ("constrained", "free"):  # A/B, batch by batch
                    n = min(BATCH_N, asked[side] - len(answers[side]))
                    if n <= 0:
                        continue
                    body = request(
                        prompt,
                        schema if side == "constrained" else None,
                        tokens if side == "constrained" else free_tokens,
                        temperature=1.0,
                        n=n,
                        seed=10_000 * case_index + batch,
                    )
                    began = time.perf_counter()
                    result = step_loop.complete(client, CHAT, body)
                    started[side] += time.perf_counter() - began
                    answers[side] += [(c["finish_reason"], c["message"]["content"] or "") for c in result["choices"]]
            for side, rows in answers.items():
                verdicts = [(reason, text, judge(text, validator)) for reason, text in rows]
                stopped = [v for v in verdicts if v[0] == "stop"]
                sides[side] = {
                    "answers": len(rows),
                    "stop": len(stopped),
                    "length": sum(1 for v in verdicts if v[0] == "length"),
                    "stopped_parse": sum(1 for v in stopped if v[2]["parses"]),
                    "stopped_valid": sum(1 for v in stopped if v[2]["valid"]),
                    "valid": sum(1 for v in verdicts if v[2]["valid"]),
                    "contains_valid": sum(1 for v in verdicts if v[2]["contains_valid"]),
                    "max_tokens": tokens if side == "constrained" else free_tokens,
                    "seconds": round(started[side], 1),
                    "invalid_stopped_examples": [v[1][:300] for v in stopped if not v[2]["valid"]][:3],
                    "examples": [v[1][:300] for v in verdicts[:2]],
                }
            out[case] = sides | {"schema": schema, "prompt": prompt}
            c, f = sides["constrained"], sides["free"]
            step_loop.log(
                f"validity {case}: constrained stop {c['stop']}/{c['answers']}, valid {c['stopped_valid']}; "
                f"free valid {f['valid']}/{f['answers']}, containing valid JSON {f['contains_valid']}"
            )
    return out


# --- driver ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a chat model prepared with its GGUF")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (speed, compile)")
    parser.add_argument("--first-rounds", type=int, default=3, help="fresh servers (first)")
    parser.add_argument("--max-tokens", type=int, default=100, help="speed: tokens per answer")
    parser.add_argument("--samples", type=int, default=100, help="validity: constrained answers per schema")
    parser.add_argument("--free-samples", type=int, default=100, help="validity: free answers per schema")
    parser.add_argument("--validity-max-tokens", type=int, default=200)
    parser.add_argument("--free-max-tokens", type=int, default=150)
    parser.add_argument("--out", type=Path, default=BENCH)
    parser.add_argument("--render", action="store_true", help="only rewrite STRUCTURED.md from --out's JSON")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_json = args.out / "structured.json"
    if args.render:
        (args.out / "STRUCTURED.md").write_text(markdown(json.loads(out_json.read_text())))
        return 0
    started = time.time()
    # Parts measured earlier and not again are kept (as bench/step_loop.py does); each part notes its options.
    results: dict[str, Any] = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results["machine"] = bench.machine_info(PACKAGES)
    results["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["server"] = {"engine": "llamacpp", "threads": step_loop.THREADS, "max_batch_size": step_loop.BATCH}
    for key in ("parts", "noise", "options"):
        results.setdefault(key, {})
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("render", "parts")}
    invocation: dict[str, Any] = {"started_at": results["started_at"], "parts": args.parts}
    invocation["model"] = args.model_dir.name
    results.setdefault("invocations", []).append(invocation)

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        invocation["duration_s"] = round(time.time() - started)
        for part in args.parts:
            results["options"][part] = options
        results["targets"] = targets(results)
        out_json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        (args.out / "STRUCTURED.md").write_text(markdown(results))

    with tempfile.TemporaryDirectory(prefix="structured-") as tmp:
        workdir = Path(tmp)
        if "first" in args.parts:  # first: fresh servers, before the long-lived one starts
            step_loop.log("first")
            busy = step_loop.top_processes({})
            first = results["parts"]["first"] = part_first(args.model_dir, args.first_rounds, workdir)
            results["noise"]["first"] = {"foreign_load_cores": first["foreign_load_cores"], "busiest_processes": busy}
            save()
        wanted = [p for p in ("speed", "compile", "validity") if p in args.parts]
        if wanted:
            server = start(args.model_dir, workdir)
            try:
                server.wait_ready(300)
                servers = {"ours": server}
                for part in wanted:
                    step_loop.log(part)
                    gauge, busy = step_loop.ForeignLoad(servers), step_loop.top_processes(servers)
                    if part == "speed":
                        figures = part_speed(server, args.rounds, args.max_tokens)
                    elif part == "compile":
                        figures = part_compile(server, args.rounds, results["started_at"])
                        figures["in process"] = in_process_compile(args.model_dir, args.rounds, results["started_at"])
                    else:
                        figures = part_validity(
                            server, args.samples, args.free_samples, args.validity_max_tokens, args.free_max_tokens
                        )
                    results["parts"][part] = figures
                    results["noise"][part] = {"foreign_load_cores": gauge.cores(), "busiest_processes": busy}
                    save()
            finally:
                server.stop()
    save()
    print(markdown(results))
    return 0


# --- report ---------------------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    parts = results.get("parts", {})
    rows: list[dict[str, Any]] = []
    for case, figures in parts.get("speed", {}).items():
        c, f = figures["constrained"]["decode_tokens_per_s"], figures["free"]["decode_tokens_per_s"]
        rows.append(
            {
                "target": f"decode tokens/s, {case} schema: constrained ÷ free",
                "value": f"{figures['decode_ratio']:.0%} ({c} vs {f}; median of per-round ratios)",
                "threshold": f"≥ {SPEED_RATIO_MIN:.0%}",
                "passed": figures["decode_ratio"] >= SPEED_RATIO_MIN,
            }
        )
    validity = parts.get("validity", {})
    if validity:
        stopped = sum(v["constrained"]["stop"] for v in validity.values())
        valid = sum(v["constrained"]["stopped_valid"] for v in validity.values())
        rows.append(
            {
                "target": "constrained answers ending with `stop` that parse and validate",
                "value": f"{valid} of {stopped}",
                "threshold": "all",
                "passed": valid == stopped,
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    m, o, parts = results["machine"], results["options"], results.get("parts", {})
    table = bench_report.table
    out = [
        "# Structured output on the llama.cpp engine: cost and validity\n",
        "`python bench/structured.py`: "
        + "; ".join(
            f"{i['started_at']}, {i.get('duration_s', 0) / 60:.0f} min, parts {', '.join(i['parts'])} "
            f"(model `{i['model']}`)"
            for i in results.get("invocations", [])
        )
        + ". One server on loopback: ENGINE=llamacpp, "
        f"THREADS={results['server']['threads']}, MAX_BATCH_SIZE={results['server']['max_batch_size']}, other "
        "settings at their defaults; requests to /v1/chat/completions with `response_format` "
        "(`json_schema`) or without. Constrained and free requests alternate (A/B/A/B) round by round; figures "
        "are medians. Tokens are counted from each response's `usage`. The machine's 2 cores are shared with "
        "other work: what else ran is below.\n",
        bench_report.machine_section(m),
        bench_report.noise_section(results, "this benchmark and its server"),
    ]
    out += bench_report.targets_section(results)
    speed = parts.get("speed")
    if speed:
        out += [
            f"## Decode speed with and without the grammar ({o['speed']['rounds']} rounds)\n",
            f"The same chat prompt asking for the JSON, greedy, max_tokens {o['speed']['max_tokens']}, streamed, with "
            "`response_format` (constrained) and without (free; the model then writes prose or loose JSON until "
            "the limit). Decode tokens/s: the tokens after the first ÷ the time after the first; end-to-end: "
            "tokens ÷ total time (the constrained answers are short, so the first token weighs more). Ratio: "
            "the median of each round's constrained ÷ free.\n",
            table(
                [
                    "schema",
                    "request",
                    "tokens",
                    "decode tokens/s",
                    "ratio",
                    "each round",
                    "end-to-end tokens/s",
                    "TTFT ms",
                    "total ms",
                ],
                [
                    [
                        case,
                        side,
                        f"{v[side]['completion_tokens']:g}",
                        f"{v[side]['decode_tokens_per_s']}",
                        f"{v['decode_ratio']:.0%}" if side == "constrained" else "",
                        ", ".join(map(str, v[side]["decode_tokens_per_s_each"])),
                        f"{v[side]['end_to_end_tokens_per_s']}",
                        f"{v[side]['ttft_ms']}",
                        f"{v[side]['total_ms']}",
                    ]
                    for case, v in speed.items()
                    for side in ("constrained", "free")
                ],
            ),
            "Constrained answers (the last round):\n",
            *[f"- {case}: `{inline(v['constrained']['text'])}`" for case, v in speed.items()],
            "",
        ]
    compiled = parts.get("compile")
    if compiled:
        out += [
            f"## First token: a new schema vs a cached one vs none ({o['compile']['rounds']} rounds)\n",
            f"The same chat prompt (served by the prefix cache alike), {TTFT_TOKENS} tokens streamed. New schema: "
            "one never sent before (a description of its own each round), so its grammar is compiled; cached: "
            "the same schema sent again. Compile cost: the median of each round's new − cached.\n",
            table(
                [
                    "schema",
                    "new schema TTFT ms",
                    "cached schema TTFT ms",
                    "no schema TTFT ms",
                    "compile cost ms",
                    "new, each round",
                ],
                [
                    [
                        case,
                        f"{v['new schema']['ttft_ms']}",
                        f"{v['cached schema']['ttft_ms']}",
                        f"{v['no schema']['ttft_ms']}",
                        f"{v['compile_ms']}",
                        ", ".join(map(str, v["new schema"]["ttft_ms_each"])),
                    ]
                    for case, v in compiled.items()
                    if case != "in process"
                ],
            ),
        ]
        local = compiled.get("in process")
        if local:
            out += [
                "The same work in the benchmark's own process, without HTTP (medians of as many new variants): "
                f"building the tokenizer's index {local['index_ms']} ms; "
                + "; ".join(
                    f"{case} schema: compile {v['compile_ms']} ms, first mask {v['first_mask_ms']} ms"
                    for case, v in local.items()
                    if isinstance(v, dict)
                )
                + ".\n"
            ]
    first = parts.get("first")
    if first:
        out += [
            f"## The first structured request after start ({first['rounds']} fresh servers)\n",
            "Each server warmed by one free request; then its first structured request (the tokenizer's index "
            "for llguidance is built then), then a second with another new schema (compiled, index already "
            "built). Index cost: the median of first − second.\n",
            table(
                [
                    "spawn → ready s",
                    "no schema TTFT ms",
                    "first structured TTFT ms",
                    "second new schema TTFT ms",
                    "index cost ms",
                ],
                [
                    [
                        f"{first['spawn_to_ready_s']}",
                        f"{first['no_schema_ttft_ms']}",
                        f"{first['first_structured_ttft_ms']}",
                        f"{first['second_new_schema_ttft_ms']}",
                        f"{first['index_ms']}",
                    ]
                ],
            ),
        ]
    validity = parts.get("validity")
    if validity:
        any_case = next(iter(validity.values()))
        out += [
            "## Validity: sampled answers, with and without the schema\n",
            f"Temperature 1, n = {BATCH_N} per request, a seed of its own per request. Constrained: "
            f"max_tokens {any_case['constrained']['max_tokens']}; free (the same prompt, no `response_format`): "
            f"max_tokens {any_case['free']['max_tokens']}. Valid: the answer as a whole parses and validates "
            "against the schema (jsonschema, Draft 2020-12); contains valid: some JSON value in it (the first that "
            "decodes, e.g. in a code fence) validates.\n",
            table(
                [
                    "schema",
                    "constrained: answers",
                    "stop",
                    "length",
                    "stopped that parse",
                    "stopped that validate",
                    "free: answers",
                    "valid",
                    "contains valid",
                    "free: stop / length",
                ],
                [
                    [
                        case,
                        f"{v['constrained']['answers']}",
                        f"{v['constrained']['stop']}",
                        f"{v['constrained']['length']}",
                        f"{v['constrained']['stopped_parse']}",
                        f"**{v['constrained']['stopped_valid']}**",
                        f"{v['free']['answers']}",
                        f"{v['free']['valid']}",
                        f"{v['free']['contains_valid']}",
                        f"{v['free']['stop']} / {v['free']['length']}",
                    ]
                    for case, v in validity.items()
                ],
            ),
            "A constrained answer per schema (the first sampled):\n",
            *[f"- {case}: `{inline(v['constrained']['examples'][0])}`" for case, v in validity.items()],
            "",
        ]
        bad = {case: v["constrained"]["invalid_stopped_examples"] for case, v in validity.items()}
        if any(bad.values()):
            out += ["Stopped constrained answers that do not validate:\n"]
            out += [f"- {case}: `{inline(e)}`" for case, examples in bad.items() for e in examples]
            out.append("")
    if results.get("findings"):
        out += ["## Findings\n", results["findings"]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
