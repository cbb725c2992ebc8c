"""The llama.cpp engine: a StepEngine over llama-cpp-python's low-level API and the prepared `model.gguf`.

It only computes: the scheduler (core/loop.py) feeds token ids, samples from the logits it gets back and decides
what each slot's KV cache keeps. llama.cpp's tokenizer is never used (TextTokenizer, as for every engine).

KV layout: one KV stream per slot (`kv_unified` off). A sequence attends only to its own stream, whose cells
hold its positions in order, so what it computes does not depend on its batch mates: a unified cache lets a
sequence's later positions land in cells freed below its earlier ones, and llama.cpp's attention then gives
other answers (measured on SmolLM2: logits off by up to 49 after such a hole, 40 of 100 greedy answers changed
under 8 concurrent requests). The price: `copy_prefix` between slots copies the source's whole stream (a memcpy
of a few MB), where a unified cache would share cells.

Streams start small (`slot_tokens` positions each, default and least: llama.cpp's 256) rather than at the full
`context`: when a chunk would take a slot beyond its stream, every stream moves into a context whose streams are
twice as long (or as long as needed), up to `context` (`llama_state_seq_*`: an exact copy, cells in the same
order). Memory follows the longest sequence held since the model loaded, not slots x context, and never shrinks.

Embeddings (`embed`) run in a context of their own, made on first use with embeddings on and a pooling type: the
GGUF's own when the model declares one (a sentence-embedding BERT: CLS or mean), else mean (a causal LM such as
SmolLM2 or GPT-2 declares none). The generation context and its KV slots are never touched, so embeddings run on
their own thread, under their own lock, while the step loop generates. An embedding-only model (config.json names
no language-model head) gets no generation context at all.

llama-cpp-python built with GGML_BACKEND_DL loads no CPU backend by itself: `load_cpu_backend` loads the variant
(AVX2, AVX-512, AMX...) a child process proved runs on this CPU (llamacpp_cpu.py), once per process, into the ggml
that libllama links.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import sys
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distilgpt2_api.engines.base import (
    PREPARE_HINT,
    Chunk,
    Embedder,
    Kernels,
    ModelInfo,
    ModelLoadError,
    StepEngine,
    TextTokenizer,
    close_at_exit,
    cpu_name,
)
from distilgpt2_api.engines.llamacpp_cpu import AUTO, CpuVariant, choose, default_cache_dir, variant_files


def _bindings() -> types.ModuleType:
    """llama_cpp.llama_cpp (the ctypes bindings) without running the llama_cpp package's __init__, which also
    imports the high-level API this engine never uses (diskcache, sqlite3, multiprocessing...): 15-40 ms of cold
    start. A later `import llama_cpp` still gets the whole package, built around these same bindings."""
    if "llama_cpp" in sys.modules:
        return importlib.import_module("llama_cpp.llama_cpp")
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError("llama-cpp-python is not installed", name="llama_cpp")
    package = types.ModuleType("llama_cpp")
    package.__spec__, package.__path__ = spec, list(spec.submodule_search_locations)
    sys.modules["llama_cpp"] = package
    try:
        return importlib.import_module("llama_cpp.llama_cpp")
    finally:
        del sys.modules["llama_cpp"]  # the package proper is imported (whole) by whoever asks for it


if TYPE_CHECKING:
    import llama_cpp.llama_cpp as llama
else:
    llama = _bindings()

GGUF_NAME = "model.gguf"  # written at prepare time (model_store/llamacpp_gguf.py)
MIN_STREAM = 256  # llama.cpp's shortest KV stream: it rounds each up to a multiple of this
# Tokens computed together: the loop's prompt chunks (PREFILL_CHUNK_TOKENS) fit one. Compute buffers grow with it.
UBATCH = 256
# Tokens one embedding call reads, and so one input may have: a pooled embedding needs every token output, and
# llama.cpp then keeps every token's logits too (SmolLM2: 512 tokens, +220 MB and 1 s on one thread; 3072: +1.2 GB).
EMBED_TOKENS = 512
EMBED_SEQUENCES = 32  # inputs embedded together in one llama_decode, their tokens within `embedding_tokens`
# llama.cpp's pooling types (enum llama_pooling_type) that give one vector per sequence, by the name docs use.
POOLINGS = {
    llama.LLAMA_POOLING_TYPE_MEAN: "mean",
    llama.LLAMA_POOLING_TYPE_CLS: "cls",
    llama.LLAMA_POOLING_TYPE_LAST: "last",
}

logger = logging.getLogger(__name__)

# llama.cpp's warnings and errors go to this module's logger; its INFO (a page per model load) is dropped. The
# callback llama-cpp-python installs reads an older numbering of ggml's levels and prints INFO as warnings.
_WARN, _ERROR, _CONT = 3, 4, 5  # enum ggml_log_level
_last_level = 0


@llama.llama_log_callback  # type: ignore[misc]
def _log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    level = _last_level if level == _CONT else level
    _last_level = level
    if level in (_WARN, _ERROR) and text and (message := text.decode("utf-8", "replace").rstrip()):
        logger.log(logging.ERROR if level == _ERROR else logging.WARNING, "llama.cpp: %s", message)


llama.llama_log_set(_log, ctypes.c_void_p(0))

_backends_lock = threading.Lock()
_cpu_variant: CpuVariant | None = None  # the CPU backend this process loaded (once: ggml keeps it)


def _ggml_library_path() -> Path:
    """The ggml that libllama links (lib/libggml.so.0 in the wheel, beside libllama.so): the one whose backend
    registry llama_model_load_from_file reads. The wheel also holds a separate lib/libggml.so, a second copy with
    a registry of its own, so loading backends through it (or llama_cpp._ggml) leaves libllama with none."""
    lib_dir = Path(llama.__file__).parent / "lib"
    for name in ("libggml.so.0", "libggml.so", "libggml.dylib"):
        if (lib_dir / name).exists():
            return lib_dir / name
    raise ModelLoadError(f"llama-cpp-python has no ggml library in {lib_dir}")


def _backend_dirs() -> list[Path]:
    """Where the CPU variants (libggml-cpu-*.so) may be: the wheel installs them in bin/ beside the package
    (site-packages/bin/, or <target>/bin/ for `pip install --target`); a build of its own may leave them in lib/."""
    package = Path(llama.__file__).parent
    return [package.parent / "bin", package / "lib"]


def load_cpu_backend(pin: str = AUTO) -> CpuVariant:
    """Load the CPU variant `llamacpp_cpu.choose` proves runs here (or `pin`), once per process."""
    global _cpu_variant
    with _backends_lock:
        if _cpu_variant is not None:
            if pin not in (AUTO, _cpu_variant.name):
                raise ModelLoadError(f"LLAMA_CPU_VARIANT={pin}, but this process runs {_cpu_variant.name} already")
            return _cpu_variant
        path = _ggml_library_path()
        variant = choose(variant_files(_backend_dirs()), path, pin=pin, cache_dir=default_cache_dir())
        ggml = ctypes.CDLL(str(path))
        ggml.ggml_backend_load.argtypes, ggml.ggml_backend_load.restype = [ctypes.c_char_p], ctypes.c_void_p
        if not ggml.ggml_backend_load(str(variant.path).encode()):
            raise ModelLoadError(f"llama.cpp cannot load its CPU variant {variant.path}")
        llama.llama_backend_init()
        logger.info(
            "llama.cpp CPU variant %s on %s, chosen by %s in %.0f ms",
            variant.name, cpu_name(), variant.reason, variant.seconds * 1000,
        )  # fmt: skip
        _cpu_variant = variant
        return variant


class LlamaCppEngine(StepEngine, Embedder):
    """`slots` sequences, each with its own KV stream of up to `context` positions (default: the model's context).
    Streams start at `slot_tokens` positions (default: `MIN_STREAM`) and grow when a sequence needs more.

    `gguf` names the weights in the model directory: model.gguf, or a quantized copy such as model.q8_0.gguf.
    `cpu_variant` pins llama.cpp's CPU backend (LLAMA_CPU_VARIANT); `auto` runs the best one proven to work here.
    """

    def __init__(
        self,
        info: ModelInfo,
        *,
        threads: int,
        slots: int,
        context: int | None = None,
        slot_tokens: int | None = None,
        gguf: str = GGUF_NAME,
        cpu_variant: str = AUTO,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.info = info
        self.slots = slots
        self._model = self._ctx = self._batch = None  # native handles, freed by close() (whatever was made)
        self._embed_ctx = self._embed_batch = None  # made by the first `embed`
        self._embed_lock = threading.Lock()
        path = info.path / gguf
        if not path.is_file():
            raise ModelLoadError(f"MODEL_DIR={info.path} has no {gguf}. {PREPARE_HINT} Or choose another ENGINE.")
        self._path = path
        self._threads = threads
        self.tokenizer = TextTokenizer(info.path)
        variant = load_cpu_backend(cpu_variant)
        self.kernels = Kernels("llamacpp", cpu_name(), variant.name, variant.reason, threads)
        model_params = llama.llama_model_default_params()
        model_params.use_mmap = True
        self._model = llama.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp cannot load {path}. {PREPARE_HINT}")
        self.context = min(context or info.context_length, info.context_length)
        # Any forward the slots can hold fits one llama_decode: the batch costs ~30 bytes a token, while compute
        # buffers follow n_ubatch and the output buffer n_outputs_max (one row per chunk).
        self._batch_size = self.context * slots
        self.embedding_tokens = min(self.context, EMBED_TOKENS)
        self.embedding_size = llama.llama_model_n_embd_out(self._model) or llama.llama_model_n_embd(self._model)
        self._pooling = self._declared_pooling()
        self.pooling = POOLINGS.get(self._pooling, "mean")
        self.stream = 0
        if not info.embedding_only:  # a model that only embeds has no generation context, no KV slots
            try:
                self._ctx = self._new_context(min(max(slot_tokens or MIN_STREAM, MIN_STREAM), self.context))
            except ModelLoadError:
                llama.llama_model_free(self._model)
                self._model = None
                raise
            self._batch = llama.llama_batch_init(self._batch_size, 0, 1)
        self._vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(self._model))
        close_at_exit(self)

    def _declared_pooling(self) -> int:
        """The pooling type the GGUF declares (`<arch>.pooling_type`: a sentence-embedding model's), else mean."""
        value = ctypes.create_string_buffer(128)
        if llama.llama_model_meta_val_str(self._model, b"general.architecture", value, len(value)) < 0:
            return llama.LLAMA_POOLING_TYPE_MEAN
        key = value.value + b".pooling_type"
        if llama.llama_model_meta_val_str(self._model, key, value, len(value)) < 0:
            return llama.LLAMA_POOLING_TYPE_MEAN
        declared = int(value.value or 0)
        return declared if declared in POOLINGS else llama.LLAMA_POOLING_TYPE_MEAN

    def _new_context(self, stream: int) -> llama.llama_context_p:
        """A context of `slots` streams of `stream` positions (llama.cpp may round it up)."""
        params = llama.llama_context_default_params()
        params.n_ctx = stream * self.slots
        params.n_seq_max = self.slots
        params.kv_unified = False
        params.n_batch = self._batch_size
        params.n_ubatch = min(self._batch_size, UBATCH)
        params.n_outputs_max = self.slots  # logits for each chunk's last token only
        params.n_threads = params.n_threads_batch = self._threads
        params.no_perf = True
        ctx = llama.llama_init_from_model(self._model, params)
        if not ctx:
            raise ModelLoadError(f"llama.cpp cannot create a context for {self._path} ({self.slots} x {stream})")
        self.stream = min(llama.llama_n_ctx(ctx) // self.slots, self.context)  # positions a slot may hold now
        self._memory = llama.llama_get_memory(ctx)
        return ctx

    @property
    def kv_cells(self) -> int:
        """KV positions reserved, all streams together."""
        return self.stream * self.slots

    def forward(self, chunks: Sequence[Chunk]) -> np.ndarray:
        total = sum(len(chunk.token_ids) for chunk in chunks)
        if total > self._batch_size:
            raise ValueError(f"{total} tokens in one forward; at most {self._batch_size}")
        longest = 0
        for chunk in chunks:
            self._check_slot(chunk.slot)
            if not chunk.token_ids:
                raise ValueError(f"an empty chunk for slot {chunk.slot}")
            if chunk.start + len(chunk.token_ids) > self.context:
                raise ValueError(f"slot {chunk.slot} would hold {chunk.start + len(chunk.token_ids)} > {self.context}")
            longest = max(longest, chunk.start + len(chunk.token_ids))
        batch = self._batch
        last_rows = [0] * len(chunks)
        i = 0
        for chunk in chunks:
            # The slot holds exactly `start` positions: whatever an earlier call left beyond them is dropped.
            self.truncate(chunk.slot, chunk.start)
        if longest > self.stream:
            self._grow(longest)
        # In slot order: llama.cpp computes a run of consecutive streams, in increasing order, in one pass over the
        # weights; out of order, each sequence would take a pass of its own (core/slots.py keeps them consecutive).
        for index in sorted(range(len(chunks)), key=lambda n: chunks[n].slot):
            chunk = chunks[index]
            for offset, token in enumerate(chunk.token_ids):
                batch.token[i] = token
                batch.pos[i] = chunk.start + offset
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = chunk.slot
                batch.logits[i] = False
                i += 1
            batch.logits[i - 1] = True
            last_rows[index] = i - 1
        batch.n_tokens = i
        status = llama.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        logits = np.empty((len(chunks), self._vocab), dtype=np.float32)
        for row, index in enumerate(last_rows):
            logits[row] = np.ctypeslib.as_array(llama.llama_get_logits_ith(self._ctx, index), shape=(self._vocab,))
        return logits

    def embed(self, token_id_lists: Sequence[Sequence[int]]) -> list[list[float]]:
        for ids in token_id_lists:
            if not 0 < len(ids) <= self.embedding_tokens:
                raise ValueError(f"an input of {len(ids)} tokens; 1 to {self.embedding_tokens} can be embedded")
        vectors: list[list[float]] = []
        with self._embed_lock:
            if not self._model:
                raise RuntimeError("the engine is closed")
            if not self._embed_ctx:
                self._open_embeddings()
            group: list[Sequence[int]] = []
            for ids in token_id_lists:
                if group and (len(group) == EMBED_SEQUENCES or sum(map(len, group)) + len(ids) > self.embedding_tokens):
                    vectors += self._embed_group(group)
                    group = []
                group.append(ids)
            if group:
                vectors += self._embed_group(group)
        return vectors

    def _open_embeddings(self) -> None:
        """The embedding context: every input's tokens read in one ubatch (pooling and a non-causal encoder's
        attention need the whole sequence), up to EMBED_SEQUENCES inputs sharing one KV cache (`kv_unified`: it is
        emptied before each call, so each input's cells are in order)."""
        params = llama.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = self.embedding_tokens
        params.n_seq_max = EMBED_SEQUENCES
        params.kv_unified = True
        params.embeddings = True
        params.pooling_type = self._pooling
        # Without flash attention: a vector is the same whatever its batch mates (so it is with the patched flash
        # attention, whose batch-invariant path reads a 512-token input in 2.0 s on SmolLM2 against 1.8 s without;
        # Intel Xeon, one thread); at EMBED_TOKENS the attention scores take a few MB.
        params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_threads = params.n_threads_batch = self._threads
        params.no_perf = True
        ctx = llama.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp cannot create an embedding context for {self._path}")
        self._embed_ctx = ctx
        self._embed_batch = llama.llama_batch_init(self.embedding_tokens, 0, 1)
        logger.info("llama.cpp embedding context: %d tokens, %s pooling", self.embedding_tokens, self.pooling)

    def _embed_group(self, group: Sequence[Sequence[int]]) -> list[list[float]]:
        ctx, batch = self._embed_ctx, self._embed_batch
        memory = llama.llama_get_memory(ctx)  # none for an encoder (BERT): nothing is kept between calls
        if memory:
            llama.llama_memory_clear(memory, True)
        i = 0
        for sequence, ids in enumerate(group):
            for position, token in enumerate(ids):
                batch.token[i] = token
                batch.pos[i] = position
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = sequence
                batch.logits[i] = True
                i += 1
        batch.n_tokens = i
        status = llama.llama_decode(ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} while embedding")
        vectors = []
        for sequence in range(len(group)):
            pooled = llama.llama_get_embeddings_seq(ctx, sequence)
            if not pooled:
                raise RuntimeError(f"llama.cpp returned no embedding for sequence {sequence}")
            vector = np.ctypeslib.as_array(pooled, shape=(self.embedding_size,)).astype(np.float64)
            norm = np.linalg.norm(vector)
            vectors.append((vector / norm if norm > 0 else vector).astype(np.float32).tolist())
        return vectors

    def _grow(self, needed: int) -> None:
        """Move every slot into streams of at least `needed` positions: twice as long, up to `context`."""
        stream = min(max(needed, 2 * self.stream), self.context)
        old, old_stream = self._ctx, self.stream
        states = []
        for slot in range(self.slots):
            held = llama.llama_memory_seq_pos_max(self._memory, slot) >= 0
            size = llama.llama_state_seq_get_size(old, slot) if held else 0
            data = (ctypes.c_uint8 * size)() if size else None
            if data is not None and llama.llama_state_seq_get_data(old, data, size, slot) != size:
                raise RuntimeError(f"llama.cpp could not save slot {slot}")
            states.append((slot, data, size))
        ctx = self._new_context(stream)
        for slot, data, size in states:
            if data is not None and llama.llama_state_seq_set_data(ctx, data, size, slot) != size:
                llama.llama_free(ctx)
                self._memory = llama.llama_get_memory(old)
                self.stream = old_stream
                raise RuntimeError(f"llama.cpp could not restore slot {slot}")
        llama.llama_free(old)
        self._ctx = ctx
        logger.info("llama.cpp KV streams grown to %d positions (%d slots)", self.stream, self.slots)

    def truncate(self, slot: int, length: int) -> None:
        self._check_slot(slot)
        llama.llama_memory_seq_rm(self._memory, slot, length, -1)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        self._check_slot(source)
        self._check_slot(target)
        if source == target:
            self.truncate(target, length)
            return
        # Between KV streams llama.cpp copies only whole streams (done at the next decode): copy, then cut.
        llama.llama_memory_seq_cp(self._memory, source, target, -1, -1)
        llama.llama_memory_seq_rm(self._memory, target, length, -1)

    def close(self) -> None:
        """Free the batches, contexts and model now. Idempotent; the engine cannot compute afterwards."""
        with self._embed_lock:  # after any embedding under way
            if self._embed_batch is not None:
                llama.llama_batch_free(self._embed_batch)
                self._embed_batch = None
            if self._embed_ctx:
                llama.llama_free(self._embed_ctx)
                self._embed_ctx = None
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} out of range: this engine has {self.slots}")
        if self.info.embedding_only:
            raise RuntimeError(f"model {self.info.name!r} only embeds: it has no generation context")
        if not self._ctx:
            raise RuntimeError("the engine is closed")
