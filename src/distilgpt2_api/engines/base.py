"""What every engine shares: the model directory's metadata, the engine contract, load errors.

Nothing here imports torch or transformers, so the fast engine's cold start never pays for them.
Every engine tokenizes with the `tokenizers` library from tokenizer.json, through TextTokenizer.
"""

from __future__ import annotations

import atexit
import json
import platform
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")  # what chat templates may refer to
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
# config.json `architectures` that generate text; a model with others only (BertModel...) only embeds.
GENERATIVE_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
PREPARE_HINT = "Prepare one with `make model` (or `python -m distilgpt2_api prepare-model`) and point MODEL_DIR at it."


class ModelLoadError(RuntimeError):
    """The model directory is missing or unusable; the message names the path and the fix."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}. {PREPARE_HINT}") from error
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object. {PREPARE_HINT}")
    return data


def _int_ids(value: object) -> set[int]:
    values = value if isinstance(value, list) else [value]
    return {v for v in values if isinstance(v, int) and not isinstance(v, bool)}


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know about a model directory, read from its JSON files."""

    path: Path
    name: str
    context_length: int
    eos_token_ids: frozenset[int]
    chat_template: str | None = None  # Jinja source: chat_template.jinja, else tokenizer_config.json's
    special_tokens: tuple[tuple[str, str], ...] = ()  # (name, text) from tokenizer_config.json: bos_token, ...
    embedding_only: bool = False  # a sentence-embedding model (a BERT...): no language-model head, it only embeds

    @classmethod
    def read(cls, model_dir: Path, served_name: str | None = None) -> ModelInfo:
        config_file = model_dir / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(
                f"MODEL_DIR={model_dir} is not a model directory (no config.json there). {PREPARE_HINT}"
            )
        config = _read_json(config_file)
        context = context_length(config)
        if context is None:
            raise ModelLoadError(f"cannot tell the context length from {config_file}. {PREPARE_HINT}")
        eos = _int_ids(config.get("eos_token_id"))
        generation_config = model_dir / "generation_config.json"
        if generation_config.is_file():
            eos |= _int_ids(_read_json(generation_config).get("eos_token_id"))
        tokenizer_config_file = model_dir / "tokenizer_config.json"
        tokenizer_config = _read_json(tokenizer_config_file) if tokenizer_config_file.is_file() else {}
        return cls(
            path=model_dir,
            name=served_name or _manifest_model_id(model_dir) or model_dir.resolve().name,
            context_length=context,
            eos_token_ids=frozenset(eos),
            chat_template=_chat_template(model_dir, tokenizer_config),
            special_tokens=tuple(
                (name, value) for name in SPECIAL_TOKENS if isinstance(value := tokenizer_config.get(name), str)
            ),
            embedding_only=not generates(config),
        )


def context_length(config: dict[str, Any]) -> int | None:
    """The context window named in a model's config.json (its key differs between architectures)."""
    return next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)


def generates(config: dict[str, Any]) -> bool:
    """Whether a model's config.json names an architecture with a language-model head (one that generates text);
    without `architectures`, it is taken to generate."""
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        return True
    return any(isinstance(a, str) and a.endswith(GENERATIVE_ARCHITECTURES) for a in architectures)


def _chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The model's chat template as Hugging Face saves it: its own file, or a field of tokenizer_config.json."""
    template_file = model_dir / CHAT_TEMPLATE_FILE
    if template_file.is_file():
        return template_file.read_text()
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one serves chat
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) and template.strip() else None


def _manifest_model_id(model_dir: Path) -> str | None:
    manifest = model_dir / "manifest.json"
    if not manifest.is_file():
        return None
    model_id = _read_json(manifest).get("model_id")
    return model_id if isinstance(model_id, str) and model_id else None


def cpu_identity() -> str:
    """What tells CPUs apart for the probe's verdict: vendor, model and the feature flags the kernel exposes."""
    keys = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags", "Features", "CPU implementer",
            "CPU architecture", "CPU variant", "CPU part")  # fmt: skip
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = (line.partition(":") for line in first.splitlines())
    return "\n".join(f"{key.strip()}: {value.strip()}" for key, _, value in fields if key.strip() in keys)


def cpu_name() -> str:
    """The CPU's model name, for logs and GET /."""
    for line in cpu_identity().splitlines():
        if line.startswith("model name:"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Kernels:
    """Which compute kernels an engine runs on this CPU, and why: logged at load, shown by GET / and /metrics."""

    engine: str  # llamacpp, ctranslate2, transformers
    cpu: str  # the CPU's model name
    variant: str  # e.g. llama.cpp's CPU backend (zen4, icelake...), or the instruction set a library dispatched to
    reason: str  # how it was chosen
    threads: int  # threads one generation computes on


@dataclass(frozen=True)
class SamplingParams:
    """How each next token is chosen. Greedy (the most likely token) unless `do_sample`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k filtering
    repetition_penalty: float = 1.0
    seed: int | None = None  # sampling only: the same seed and request give the same output

    @property
    def seed_in_use(self) -> int | None:
        """The seed, when it means something: greedy decoding draws nothing."""
        return self.seed if self.do_sample else None


GREEDY = SamplingParams()


@dataclass(frozen=True)
class TokenRequest:
    """What a whole-job engine computes: `n` sequences of new token ids after `prompt_ids`, nothing it does not use.

    Stop strings, deadlines and cancellation are the scheduler's: it ends a sequence from the step callback.
    """

    prompt_ids: tuple[int, ...]
    n: int
    max_new_tokens: int
    sampling: SamplingParams
    logprobs: int | None = None  # None: none; k: each chosen token's log-probability and the k likeliest


@dataclass(frozen=True)
class TokenStep:
    """One token an engine generated for one sequence of a job, as soon as it is chosen."""

    sequence: int  # which of the job's `n` sequences
    token_id: int
    logprob: float | None = None  # log-softmax of the model's logits (before temperature), if asked for
    top_logprobs: tuple[tuple[int, float], ...] = ()  # the k likeliest (token id, logprob), likeliest first


# Called for every generated token, in order, on the engine's thread; True ends that sequence there.
StepCallback = Callable[[TokenStep], bool]


def logprobs_of(logits: np.ndarray, token_id: int, top: int) -> tuple[float, tuple[tuple[int, float], ...]]:
    """The chosen token's log-probability under `logits` (one row, the model's raw scores) and the `top` likeliest."""
    shifted = logits.astype(np.float64) - logits.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    top = min(top, logprobs.size - 1)
    if top <= 0:
        return float(logprobs[token_id]), ()
    best = np.argpartition(-logprobs, top)[:top]
    best = best[np.argsort(-logprobs[best], kind="stable")]
    return float(logprobs[token_id]), tuple((int(i), float(logprobs[i])) for i in best)


_open_engines: weakref.WeakSet[Engine | StepEngine] = weakref.WeakSet()


def close_at_exit(engine: Engine | StepEngine) -> None:
    """Close `engine` at interpreter exit if nobody did, while the interpreter is still whole (atexit runs after
    the schedulers' worker threads are joined). llama.cpp frees its contexts and models while llama-cpp-python's
    log callback still exists. CTranslate2: a generate_batch with a Python callback leaves that callback in a job
    which its worker thread frees after the caller has its result, and freeing it takes the GIL; once the
    interpreter is finalizing, CPython ends such a thread with pthread_exit, whose unwinding through a noexcept
    destructor calls std::terminate (exit code -6): closing first lets that job go."""
    _open_engines.add(engine)


@atexit.register
def _close_open_engines() -> None:
    for engine in list(_open_engines):
        engine.close()


class Engine(ABC):
    """A loaded model that generates whole jobs per call (core/batch.py drives it); it only computes.

    The scheduler tokenizes, validates, decodes and decides when a sequence ends; an engine receives only what
    it uses. What it cannot do is declared here, as class attributes, never probed.
    """

    info: ModelInfo
    tokenizer: TextTokenizer
    kernels: Kernels
    batching: ClassVar[bool]  # whether one call may carry several jobs (else exactly one)
    # With alternatives (top logprobs), steps a job may take in all (sequences x new tokens); None: unbounded.
    max_alternatives_steps: ClassVar[int | None] = None

    @abstractmethod
    def generate(self, jobs: Sequence[TokenRequest], on_step: StepCallback) -> None:
        """Generate every job's `n` sequences in one call, passing each new token to `on_step` as soon as it is
        chosen. `TokenStep.sequence` counts the sequences of all jobs, in order (job 0's first).

        The jobs share their sampling parameters and logprobs setting (the scheduler batches only such jobs).
        A sequence ends at an EOS token (passed on too), at its job's `max_new_tokens`, or when `on_step`
        returns True. Returns once every sequence has ended; an exception raised by `on_step` is raised here.
        """

    @abstractmethod
    def close(self) -> None:
        """Release native resources now, before interpreter shutdown; the engine is unusable after."""


@dataclass(frozen=True)
class Chunk:
    """Tokens to feed into one slot's sequence, the first at position `start` (what the slot already holds)."""

    slot: int
    token_ids: Sequence[int]
    start: int


class StepEngine(ABC):
    """A model the scheduler drives one step at a time (core/loop.py); it only computes.

    It holds up to `slots` sequences' KV caches at once, each up to `info.context_length` positions. The
    scheduler decides which sequences run, feeds their tokens, samples from the logits it gets back, and
    frees or keeps (prefix caching) each slot's cache.
    """

    info: ModelInfo
    tokenizer: TextTokenizer
    kernels: Kernels
    slots: int

    @abstractmethod
    def forward(self, chunks: Sequence[Chunk]) -> np.ndarray:
        """Feed every chunk in one pass, each into its slot after the `start` positions it holds; return the
        logits after each chunk's last token: float32, shape (len(chunks), vocabulary). Rows are the model's raw
        scores, read before the next call."""

    @abstractmethod
    def truncate(self, slot: int, length: int) -> None:
        """Keep only the first `length` positions of `slot` (0: the slot is empty)."""

    @abstractmethod
    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Make `target` hold `source`'s first `length` positions (`target` emptied first)."""

    @abstractmethod
    def close(self) -> None:
        """Release native resources now; the engine is unusable after."""


class Embedder(ABC):
    """An engine that also computes sentence embeddings: one vector per input, pooled over its tokens."""

    embedding_size: int  # each vector's dimensions
    embedding_tokens: int  # tokens one input may have
    pooling: str  # how token states become one vector: mean, cls or last

    @abstractmethod
    def embed(self, token_id_lists: Sequence[Sequence[int]]) -> list[list[float]]:
        """One L2-normalised vector per list of token ids, in order; thread-safe, beside generation. The ids are
        in the vocabulary and each list holds 1 to `embedding_tokens` of them (the caller checks)."""


class TextTokenizer:
    """The model's tokenizer.json, through the `tokenizers` library: the same for every engine."""

    def __init__(self, model_dir: Path) -> None:
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"MODEL_DIR={model_dir} has no tokenizer.json. {PREPARE_HINT}")
        try:
            self.backend = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library raises its own exception type
            raise ModelLoadError(f"cannot read {path}: {error}. {PREPARE_HINT}") from error

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; a rendered chat prompt already holds its special tokens (add none)."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: list[int]) -> str:
        return str(self.backend.decode(token_ids, skip_special_tokens=True))

    def token_text(self, token_id: int) -> str:
        """One token's own text, special tokens included (an unfinished character shows as U+FFFD)."""
        return str(self.backend.decode([token_id], skip_special_tokens=False))

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    @cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(i for i, token in self.backend.get_added_tokens_decoder().items() if token.special)

    def tokens(self, token_ids: list[int]) -> list[str]:
        """The token strings of `token_ids` (what CTranslate2 takes as input)."""
        return [self.backend.id_to_token(i) for i in token_ids]

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size())
