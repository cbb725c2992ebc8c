"""Run in a child process: does a llama.cpp CPU variant (libggml-cpu-<name>.so) compute correctly on this CPU?

A kernel the CPU cannot execute kills its process with SIGILL, which no handler can turn into an error. So the
service never runs a variant's kernels before a child has run them: this script, started by llamacpp_cpu.py with
`python -I -S` (the standard library only: no site-packages, nothing of the service), loads the ggml that
libllama links, then for each variant path it is given, in order:

1. loads the variant (its score is 0 where the CPU lacks an extension the variant was compiled for);
2. multiplies matrices of every weight type the engine may serve (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
   Q4_K, Q5_K, Q6_K), for one row and for a prompt's worth of rows, with the weights in each buffer type the
   variant offers (plain, and its extra ones: AMX tiles, repacked layouts), on several threads, followed by
   rms_norm and soft_max; and checks every product against the plain F32 one (pure Python checks that one).

It prints one JSON line as each stage begins and one per variant with the verdict, flushing each, and stops at the
first variant that passes. If the process dies, the last stage begun names what killed it.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

# enum ggml_type (ggml.h) of the weight types a served GGUF may hold, F32 first: the reference.
WEIGHT_TYPES = {
    "f32": 0,
    "f16": 1,
    "bf16": 30,
    "q8_0": 8,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q4_k": 12,
    "q5_k": 13,
    "q6_k": 14,
}
F32 = WEIGHT_TYPES["f32"]
K, N = 512, 64  # weight shape: K a multiple of every block size (256 for K-quants), N of AMX's 32-row blocks
ROWS = (1, 32)  # decode (one token) and a prompt chunk take different kernels (AMX: VNNI for 1 row, tiles beyond)
# Relative error of a product against F32's: quantization costs a few percent; a broken kernel gives ~100%.
TOLERANCE = 0.25
REFERENCE_TOLERANCE = 1e-3  # F32 against the pure-Python product


class Failed(Exception):
    """The variant runs but cannot be used: not for this CPU, or it computes wrong answers."""


class GgmlInitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def bind(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Callable[..., Any]:
    function = getattr(lib, name)
    function.restype, function.argtypes = restype, list(argtypes)
    return function  # type: ignore[no-any-return]


class Ggml:
    """The few ggml calls a probe makes, bound through the library libllama links (and its libggml-base)."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        p, size, i64, i32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int
        self.load = bind(lib, "ggml_backend_load", p, ctypes.c_char_p)
        self.reg_dev_get = bind(lib, "ggml_backend_reg_dev_get", p, p, size)
        self.proc_address = bind(lib, "ggml_backend_reg_get_proc_address", p, p, ctypes.c_char_p)
        self.dev_init = bind(lib, "ggml_backend_dev_init", p, p, ctypes.c_char_p)
        self.dev_buffer_type = bind(lib, "ggml_backend_dev_buffer_type", p, p)
        self.dev_supports_op = bind(lib, "ggml_backend_dev_supports_op", ctypes.c_bool, p, p)
        self.buft_name = bind(lib, "ggml_backend_buft_name", ctypes.c_char_p, p)
        self.init = bind(lib, "ggml_init", p, GgmlInitParams)
        self.free = bind(lib, "ggml_free", None, p)
        self.tensor_overhead = bind(lib, "ggml_tensor_overhead", size)
        self.graph_overhead = bind(lib, "ggml_graph_overhead", size)
        self.new_tensor_2d = bind(lib, "ggml_new_tensor_2d", p, p, i32, i64, i64)
        self.mul_mat = bind(lib, "ggml_mul_mat", p, p, p, p)
        self.rms_norm = bind(lib, "ggml_rms_norm", p, p, p, ctypes.c_float)
        self.soft_max = bind(lib, "ggml_soft_max", p, p, p)
        self.new_graph = bind(lib, "ggml_new_graph", p, p)
        self.build_forward = bind(lib, "ggml_build_forward_expand", None, p, p)
        self.alloc_tensors = bind(lib, "ggml_backend_alloc_ctx_tensors_from_buft", p, p, p)
        self.buffer_free = bind(lib, "ggml_backend_buffer_free", None, p)
        self.tensor_set = bind(lib, "ggml_backend_tensor_set", None, p, p, size, size)
        self.tensor_get = bind(lib, "ggml_backend_tensor_get", None, p, p, size, size)
        self.compute = bind(lib, "ggml_backend_graph_compute", i32, p, p)
        self.backend_free = bind(lib, "ggml_backend_free", None, p)
        self.row_size = bind(lib, "ggml_row_size", size, i32, i64)
        self.quantize = bind(lib, "ggml_quantize_chunk", size, i32, p, p, i64, i64, i64, p)


class Device:
    """One loaded variant: its CPU device, a backend on `threads` threads and its buffer types."""

    def __init__(self, ggml: Ggml, path: str, threads: int) -> None:
        self.ggml = ggml
        reg = ggml.load(path.encode())
        if not reg:
            raise Failed("ggml would not load it")
        self.dev = ggml.reg_dev_get(reg, 0)
        self.backend = ggml.dev_init(self.dev, None)
        if not self.backend:
            raise Failed("its device would not start")
        set_threads = ggml.proc_address(reg, b"ggml_backend_set_n_threads")
        if set_threads:
            ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)(set_threads)(self.backend, threads)
        self.buffer_types = [("plain", ggml.dev_buffer_type(self.dev))]
        get_extra = ggml.proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        if get_extra:
            extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(get_extra)(self.dev)
            i = 0
            while extra and extra[i]:
                self.buffer_types.append((ggml.buft_name(extra[i]).decode(), extra[i]))
                i += 1

    def close(self) -> None:
        self.ggml.backend_free(self.backend)


@functools.cache
def floats(count: int, seed: int) -> ctypes.Array[ctypes.c_float]:
    rng = random.Random(seed)
    return (ctypes.c_float * count)(*(rng.uniform(-1.0, 1.0) for _ in range(count)))


def product(device: Device, buffer_type: int, weight_type: int, rows: int) -> list[float] | None:
    """softmax(rms_norm(W @ X)) of fixed inputs, W stored as `weight_type` in `buffer_type`; None when this
    device would not take W in that buffer for a matrix product (llama.cpp would not put it there either)."""
    ggml = device.ggml
    weights, inputs = floats(K * N, seed=1), floats(K * rows, seed=2)
    contexts: list[int] = []
    buffers: list[int] = []

    def context(tensors: int, graph: bool = False) -> int:
        size = ggml.tensor_overhead() * tensors + (ggml.graph_overhead() if graph else 0)
        ctx = ggml.init(GgmlInitParams(size, None, True))
        contexts.append(ctx)
        return ctx

    def allocate(ctx: int, buft: int) -> None:
        buffer = ggml.alloc_tensors(ctx, buft)
        if not buffer:
            raise Failed(f"no {ggml.buft_name(buft).decode()} buffer")
        buffers.append(buffer)

    try:
        w_ctx, x_ctx, out_ctx = context(1), context(1), context(4, graph=True)
        w = ggml.new_tensor_2d(w_ctx, weight_type, K, N)
        x = ggml.new_tensor_2d(x_ctx, F32, K, rows)
        allocate(w_ctx, buffer_type)
        allocate(x_ctx, device.buffer_types[0][1])
        y = ggml.mul_mat(out_ctx, w, x)
        if not ggml.dev_supports_op(device.dev, y):
            return None
        out = ggml.soft_max(out_ctx, ggml.rms_norm(out_ctx, y, 1e-6))
        graph = ggml.new_graph(out_ctx)
        ggml.build_forward(graph, out)
        allocate(out_ctx, device.buffer_types[0][1])
        size = ggml.row_size(weight_type, K) * N
        data = (ctypes.c_uint8 * size)()
        if weight_type == F32:
            ctypes.memmove(data, weights, size)
        else:
            ggml.quantize(weight_type, weights, data, 0, N, K, None)
        ggml.tensor_set(w, data, 0, size)
        ggml.tensor_set(x, inputs, 0, ctypes.sizeof(inputs))
        if ggml.compute(device.backend, graph) != 0:
            raise Failed("graph compute failed")
        result = (ctypes.c_float * (N * rows))()
        ggml.tensor_get(out, result, 0, ctypes.sizeof(result))
        return list(result)
    finally:
        for buffer in buffers:
            ggml.buffer_free(buffer)
        for ctx in contexts:
            ggml.free(ctx)


def reference_row() -> list[float]:
    """softmax(rms_norm(W @ x)) for the first input row (the same whatever the row count), in pure Python."""
    weights, inputs = floats(K * N, seed=1), floats(K, seed=2)
    y = [sum(weights[n * K + k] * inputs[k] for k in range(K)) for n in range(N)]
    scale = 1.0 / math.sqrt(sum(v * v for v in y) / N + 1e-6)
    top = max(y) * scale
    e = [math.exp(v * scale - top) for v in y]
    return [v / sum(e) for v in e]


def relative_error(a: Sequence[float], b: Sequence[float]) -> float:
    if not all(math.isfinite(v) for v in a):
        return math.inf
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True))) / math.sqrt(sum(y * y for y in b))


def probe(ggml: Ggml, name: str, path: str, threads: int) -> None:
    """Raise Failed unless the variant at `path` computes every product correctly (or dies trying). The first
    products, F32 in the plain buffer, are the reference for the others; their first row is checked against Python's."""
    emit(event="begin", variant=name, stage="load")
    device = Device(ggml, path, threads)
    plain, python = device.buffer_types[0][1], reference_row()
    reference: dict[int, list[float]] = {}
    try:
        for buffer_name, buffer_type in device.buffer_types:
            for type_name, weight_type in WEIGHT_TYPES.items():
                for rows in ROWS:
                    stage = f"{type_name} x {rows} row{'s' if rows > 1 else ''}, weights in its {buffer_name} buffer"
                    emit(event="begin", variant=name, stage=stage)
                    result = product(device, buffer_type, weight_type, rows)
                    if (buffer_type, weight_type) == (plain, F32):
                        if result is None or relative_error(result[:N], python) > REFERENCE_TOLERANCE:
                            raise Failed("its F32 matrix product disagrees with Python's")
                        reference[rows] = result
                    elif result is not None and relative_error(result, reference[rows]) > TOLERANCE:
                        raise Failed(f"wrong results: {stage}")
    finally:
        device.close()


def score(path: str) -> int | None:
    """The variant's own score for this CPU (ggml_backend_score: 0 where it cannot run; higher is better), as
    ggml ranks variants; None for a library without one (a build with a single CPU backend)."""
    function = getattr(ctypes.CDLL(path), "ggml_backend_score", None)
    if function is None:
        return None
    function.restype, function.argtypes = ctypes.c_int, []
    return int(function())


def main(argv: Sequence[str]) -> int:
    """argv: the ggml library, the thread count, then name=path of each variant to consider. Each is scored, then
    tried best first until one passes; a library without a score (a single-backend build) is tried last."""
    ggml_path, threads, *variants = argv
    ggml = Ggml(ggml_path)
    scored = []
    for variant in variants:
        name, _, path = variant.partition("=")
        emit(event="begin", variant=name, stage="score")
        scored.append((score(path), name, path))
    for value, name, path in sorted(scored, key=lambda entry: -1 if entry[0] is None else -entry[0]):
        if value == 0:
            emit(event="result", variant=name, ok=False, reason="not for this CPU: it lacks an extension (score 0)")
            continue
        try:
            probe(ggml, name, path, int(threads))
        except Failed as failure:
            emit(event="result", variant=name, ok=False, reason=str(failure))
            continue
        emit(event="result", variant=name, ok=True)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
