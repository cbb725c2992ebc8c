"""The S3 cold start (MODEL_S3_URI) against a moto server on loopback: bytes fetched, seconds, peak disk.

    python bench/s3_cold_start.py [--repeat 3] [--model NAME=DIR ...] [--json PATH] [--markdown PATH]

For each prepared model directory, uploads it to a moto S3 server running in its own process (so it
does not share this process's GIL), then times `ensure_model_from_s3` into an empty cache directory:
for ENGINE=ctranslate2, for ENGINE=transformers, and the code before this change ("all files, serial":
`download_prefix` of every object, then `verify_checksums`). Bytes fetched are the GetObject response
bodies; peak disk is the most the cache directory held (allocated blocks), polled every 5 ms.
Defaults: models/default (SmolLM2 from `make model`) and a distilgpt2-shaped random GPT-2 built in /tmp.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "src"), str(ROOT / "tests")]  # bench.py, the service, model_factory

from distilgpt2_api.model_store import read_manifest, write_manifest  # noqa: E402
from distilgpt2_api.model_store import s3 as s3_store  # noqa: E402
from distilgpt2_api.model_store.manifest import CT2_SUBDIR, engine_files, verify_checksums  # noqa: E402
from distilgpt2_api.model_store.staging import staged_directory  # noqa: E402

MODES = ("ctranslate2", "transformers", "before", "ctranslate2/1-get", "transformers/1-get", "before/1-get")
MODE_LABELS = {
    "ctranslate2": "ENGINE=ctranslate2 (default)",
    "transformers": "ENGINE=transformers",
    "before": "before: every object, serial",
    "ctranslate2/1-get": "calibration: ENGINE=ctranslate2, one GET per object",
    "transformers/1-get": "calibration: ENGINE=transformers, one GET per object",
    "before/1-get": "calibration: before, one GET per object",
}
# moto answers a ranged GET by reading the whole object and slicing it, so boto3's 8 MB ranges of a
# 500 MB object cost moto 65 full reads. The /1-get modes turn ranges off to show what that costs.
NO_RANGES = TransferConfig(multipart_threshold=1 << 40)
MiB = 1 << 20
LAMBDA_DEFAULT_TMP_MB = 512
MODEL_NOTES = {
    "distilgpt2-shape": "bench.py's distilgpt2-shaped GPT-2 with random weights, built in /tmp. Its tokenizer is "
    "a byte-level BPE of GPT-2's size (50,000 merges) saved as indented JSON, so its tokenizer.json is 3.7 MB "
    "where distilgpt2's is 1.3 MB, and its safetensors lack the 24 MB of attention-mask buffers in distilgpt2's "
    "Hub file: the real distilgpt2 needs about 83 MB for ENGINE=ctranslate2 and 340 MB for ENGINE=transformers "
    "(from its file sizes, not measured).",
}


def _serve_moto(ready: Any) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    ready.put(server.get_host_and_port())
    threading.Event().wait()  # until terminated


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 endpoint in a child process; AWS_* variables point boto3 at it."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    process = context.Process(target=_serve_moto, args=(ready,), daemon=True)
    process.start()
    try:
        host, port = ready.get(timeout=60)
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://{host}:{port}",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            os.environ.pop(name, None)
        yield f"http://{host}:{port}"
    finally:
        process.terminate()
        process.join(10)


def build_distilgpt2_shape(workdir: Path) -> Path:
    """bench.py's distilgpt2-shaped model (random weights), with its manifest rewritten after the int8
    conversion so that it lists ctranslate2-int8/ as `prepare-model` does."""
    from bench import prepare_distil  # torch and transformers: only when building

    path = prepare_distil(workdir)
    manifest = read_manifest(path)
    if manifest is None or f"{CT2_SUBDIR}/model.bin" not in manifest.files:
        write_manifest(path, source="local", model_id="distilgpt2-shape-random")
    return path


class Meter:
    """GetObject bytes and requests on the model store's boto3 client, and the cache directory's peak size."""

    def __init__(self, *, ranges: bool = True) -> None:
        self.ranges = ranges
        self.bytes = 0
        self.requests = 0
        self.keys: set[str] = set()
        self._lock = threading.Lock()
        self._real_client = s3_store._client

    def _count(self, parsed: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.bytes += int(parsed.get("ContentLength", 0))
            self.requests += 1

    def _key(self, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.keys.add(params["Key"])

    def client(self) -> Any:
        client = self._real_client()
        client.meta.events.register("after-call.s3.GetObject", self._count)
        client.meta.events.register("before-parameter-build.s3.GetObject", self._key)
        if not self.ranges:
            download = client.download_file
            client.download_file = lambda *args, **kwargs: download(*args, Config=NO_RANGES, **kwargs)
        return client


def disk_used(root: Path) -> int:
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with suppress(FileNotFoundError):  # renamed or removed between listing and stat
                total += os.stat(os.path.join(folder, name)).st_blocks * 512
    return total


@contextmanager
def peak_disk(root: Path, interval: float = 0.005) -> Iterator[list[int]]:
    peak = [0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], disk_used(root))
            stop.wait(interval)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], disk_used(root))


def ensure_before(uri: str, cache_dir: Path) -> Path:
    """The cold start before this change: every object under the prefix, one after another, then hash all."""
    target = cache_dir / "before"
    with staged_directory(target) as staging:
        s3_store.download_prefix(uri, staging)
        manifest = read_manifest(staging)
        assert manifest is not None
        verify_checksums(staging, manifest, origin=uri)
    return target


def run_once(mode: str, uri: str, workdir: Path) -> dict[str, Any]:
    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=workdir))
    engine, _, variant = mode.partition("/")
    meter = Meter(ranges=variant != "1-get")
    s3_store._client = meter.client  # type: ignore[assignment]
    fetch: Callable[[], Path] = (
        (lambda: ensure_before(uri, cache_dir))
        if engine == "before"
        else (lambda: s3_store.ensure_model_from_s3(uri, cache_dir, engine=engine))  # type: ignore[arg-type]
    )
    try:
        with peak_disk(cache_dir) as peak:
            started = time.perf_counter()
            fetch()
            seconds = time.perf_counter() - started
    finally:
        s3_store._client = meter._real_client  # type: ignore[assignment]
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {
        "seconds": seconds,
        "bytes_fetched": meter.bytes,
        "get_requests": meter.requests,
        "objects": len(meter.keys),
        "peak_disk_bytes": peak[0],
    }


def measure_model(name: str, model_dir: Path, repeat: int, workdir: Path) -> dict[str, Any]:
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise SystemExit(f"{model_dir} has no manifest.json: prepare it first (make model)")
    bucket = f"bench-{name.lower().replace('_', '-')}"
    s3_store._client().create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/{name}/"
    started = time.perf_counter()
    s3_store.upload_directory(model_dir, uri)
    print(f"[{name}] uploaded {manifest.size_bytes / MiB:.0f} MB in {time.perf_counter() - started:.1f} s", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for round_ in range(repeat):
        for mode in MODES:  # interleaved, so background load spreads over all modes
            result = run_once(mode, uri, workdir)
            runs[mode].append(result)
            print(
                f"[{name}] round {round_ + 1} {mode}: {result['seconds']:.2f} s, "
                f"{result['bytes_fetched'] / MiB:.1f} MB fetched, peak {result['peak_disk_bytes'] / MiB:.1f} MB",
                flush=True,
            )
    selections = {mode: engine_files(manifest, mode) for mode in ("ctranslate2", "transformers")}
    return {
        "name": name,
        "path": str(model_dir),
        "model_id": manifest.model_id,
        "parameter_count": manifest.parameter_count,
        "prepared_bytes": manifest.size_bytes,
        "files": {n: e.size for n, e in manifest.files.items()},
        "engine_bytes": {mode: sum(e.size for e in files.values()) for mode, files in selections.items()},
        "modes": {
            mode: {
                "seconds_median": statistics.median(r["seconds"] for r in results),
                "seconds_all": [r["seconds"] for r in results],
                "bytes_fetched": results[-1]["bytes_fetched"],
                "get_requests": results[-1]["get_requests"],
                "objects": results[-1]["objects"],
                "peak_disk_bytes": max(r["peak_disk_bytes"] for r in results),
            }
            for mode, results in runs.items()
        },
    }


def cpu_description() -> str:
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    shown = [f for f in ("avx2", "avx512f", "sha_ni", "amx_tile") if f in flags]
    return (
        f"{fields.get('model name', platform.processor())} (family {fields.get('cpu family')}, "
        f"model {fields.get('model')}), {os.cpu_count()} logical CPUs; flags: {', '.join(shown)}"
    )


def sha256_throughput() -> float:
    """MB/s of hashlib.sha256 on this CPU (256 MB from memory), the per-byte cost of verification."""
    import hashlib

    data = os.urandom(16 * MiB)
    started = time.perf_counter()
    digest = hashlib.sha256()
    for _ in range(16):
        digest.update(data)
    return 256 / (time.perf_counter() - started)


def mb(n: float) -> str:
    return f"{n / MiB:,.1f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# S3 cold start (MODEL_S3_URI)",
        "",
        f"`python bench/s3_cold_start.py --repeat {report['repeat']}`, {report['date']}.",
        "",
        f"- CPU: {report['cpu']}.",
        f"- Python {report['python']}, boto3 {report['boto3']}, moto {report['moto']} (server in its own process, "
        "127.0.0.1). The cache directory is on the same filesystem as /tmp.",
        f"- sha256 on this CPU: {report['sha256_mb_s']:,.0f} MB/s. Load average (1, 5, 15 min) at the start "
        f"{' '.join(f'{x:.2f}' for x in report['load_average']['start'])}, at the end "
        f"{' '.join(f'{x:.2f}' for x in report['load_average']['end'])}: other processes shared the 2 CPUs.",
        f"- `DOWNLOAD_THREADS` = {report['download_threads']}; boto3's default transfer config (objects over "
        "8 MB in parallel 8 MB ranged GETs, 10 per object).",
        "- seconds: `ensure_model_from_s3` into an empty cache directory, from the call to a verified, published "
        "copy (boto3 client creation included), median of the rounds. Bytes fetched: GetObject response bodies. "
        "Peak disk: most the cache directory held during the call (allocated blocks, polled every 5 ms). "
        "MB = MiB, as Lambda counts memory and ephemeral storage.",
        "- before: the code before this change (every object under the prefix, one after another, then every "
        "file hashed).",
        "",
    ]
    for model in report["models"]:
        lines += [
            f"## {model['name']}: {model['model_id']} ({model['parameter_count'] / 1e6:.1f} M parameters)",
            "",
            f"`{model['path']}`, {mb(model['prepared_bytes'])} MB prepared "
            f"(files: {', '.join(f'{n} {mb(s)}' for n, s in sorted(model['files'].items(), key=lambda x: -x[1])[:3])}"
            " MB, …).",
            "",
            *([MODEL_NOTES[model["name"]], ""] if model["name"] in MODEL_NOTES else []),
            f"| what is fetched | objects | GET requests | MB fetched | seconds | peak disk MB "
            f"| fits the default {LAMBDA_DEFAULT_TMP_MB} MB /tmp |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode in MODES:
            row = model["modes"][mode]
            fits = "yes" if row["peak_disk_bytes"] <= LAMBDA_DEFAULT_TMP_MB * MiB else "**no**"
            seconds = ", ".join(f"{s:.2f}" for s in row["seconds_all"])
            lines.append(
                f"| {MODE_LABELS[mode]} | {row['objects']} | {row['get_requests']} | {mb(row['bytes_fetched'])} "
                f"| **{row['seconds_median']:.2f}** ({seconds}) | {mb(row['peak_disk_bytes'])} | {fits} |"
            )
        modes = model["modes"]
        share = modes["ctranslate2"]["bytes_fetched"] / modes["before"]["bytes_fetched"]
        ranged = modes["ctranslate2"]["seconds_median"] / modes["before"]["seconds_median"]
        single = modes["ctranslate2/1-get"]["seconds_median"] / modes["before/1-get"]["seconds_median"]
        lines += [
            "",
            f"ENGINE=ctranslate2 fetches and stores {share:.0%} of what the cold start fetched before, in "
            f"{ranged:.0%} of the time here ({single:.0%} with one GET per object).",
            "",
        ]
    lines += [
        "## Reading it",
        "",
        "- Bytes and peak disk do not depend on the machine: the engine's files, nothing else (peak disk = bytes "
        "fetched: each file is written once, in place in the staging directory). The disk check runs before any "
        "download, so a /tmp too small for them fails at once, with both sizes in the message.",
        "- Seconds are loopback moto's, not S3's. moto answers a ranged GET by reading the whole object from its "
        "spool file and slicing it, so boto3's 8 MB ranges of a 513 MB object cost moto about 65 full reads: the "
        "first three rows of each table are mostly moto's time. The calibration rows (ranges off) show the "
        "client's own cost on this machine: receiving, writing and hashing every byte, with moto serving on the "
        "same 2 CPUs.",
        "- On Lambda the network is the unknown: its time is the bytes fetched over the function's S3 throughput, "
        "which this benchmark cannot measure. Fewer bytes is the saving that carries over.",
        "",
        "## Raw results",
        "",
        "```json",
        json.dumps(report, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def parse_models(values: list[str] | None, workdir: Path) -> list[tuple[str, Path]]:
    if values:
        return [(v.partition("=")[0], Path(v.partition("=")[2])) for v in values]
    return [
        ("SmolLM2-135M", ROOT / "models" / "default"),
        ("distilgpt2-shape", build_distilgpt2_shape(Path(tempfile.gettempdir()) / "s3-cold-start-models")),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="NAME=DIR of a prepared model (repeatable)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--markdown", type=Path, default=BENCH / "S3_COLD_START.md")
    parser.add_argument("--from-json", type=Path, help="only rewrite the markdown from an earlier --json")
    args = parser.parse_args()
    if args.from_json:
        args.markdown.write_text(markdown(json.loads(args.from_json.read_text())))
        return

    import boto3
    import moto

    load_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="s3-cold-start-"))
    try:
        models = parse_models(args.model, workdir)
        with moto_server():
            results = [measure_model(name, path, args.repeat, workdir) for name, path in models]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "repeat": args.repeat,
        "cpu": cpu_description(),
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "moto": moto.__version__,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "sha256_mb_s": sha256_throughput(),
        "download_threads": s3_store.DOWNLOAD_THREADS,
        "models": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    args.markdown.write_text(markdown(report))
    print(f"wrote {args.markdown}" + (f" and {args.json}" if args.json else ""))


if __name__ == "__main__":
    main()
