"""The fast engine: CTranslate2 with int8 weights, and the `tokenizers` library.

int8 arithmetic reads a quarter of the bytes per token, and neither torch nor
transformers is imported, so the cold start is a fraction of the reference engine's.
The converted model, and whether int8 arithmetic keeps its quality, are settled at
prepare time (model_store/convert.py), never here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import ctranslate2
import numpy as np

from distilgpt2_api.engines.base import (
    PREPARE_HINT,
    Engine,
    Kernels,
    ModelInfo,
    ModelLoadError,
    SamplingParams,
    StepCallback,
    TextTokenizer,
    TokenRequest,
    TokenStep,
    close_at_exit,
    cpu_name,
    logprobs_of,
)

CT2_SUBDIR = "ctranslate2-int8"
QUALITY_FILE = "quality.json"  # written at prepare time: the compute type that keeps quality


def prepared_compute_type(converted: Path) -> str:
    """The compute type chosen when the model was prepared (int8 for a conversion without a choice)."""
    try:
        return str(json.loads((converted / QUALITY_FILE).read_text())["compute_type"])
    except (OSError, ValueError, KeyError):
        return "int8"


class CTranslate2Engine(Engine):
    def __init__(self, info: ModelInfo, *, threads: int, compute_type: str = "auto") -> None:
        self.info = info
        converted = info.path / CT2_SUBDIR
        if not (converted / "model.bin").is_file():
            raise ModelLoadError(
                f"MODEL_DIR={info.path} has no CTranslate2 model ({CT2_SUBDIR}/). {PREPARE_HINT} "
                "Or set ENGINE=transformers."
            )
        self.tokenizer = TextTokenizer(info.path)
        self.compute_type = prepared_compute_type(converted) if compute_type == "auto" else compute_type
        isa = os.environ.get("CT2_FORCE_CPU_ISA")
        self.kernels = Kernels(
            "ctranslate2",
            cpu_name(),
            f"{self.compute_type}, {isa or 'auto'} ISA",
            "CT2_FORCE_CPU_ISA" if isa else "CTranslate2 dispatches on the CPU's extensions as it runs",
            threads,
        )
        self._generator_args = {
            "model_path": str(converted),
            "device": "cpu",
            "compute_type": self.compute_type,
            "intra_threads": threads,
            "inter_threads": 1,
        }
        try:
            self.generator = ctranslate2.Generator(**self._generator_args)
        except (RuntimeError, ValueError, OSError) as error:
            raise ModelLoadError(f"cannot load the model in MODEL_DIR={info.path}: {error}. {PREPARE_HINT}") from error
        close_at_exit(self)

    def close(self) -> None:
        """Free the generator now: its destructor joins the worker thread with the GIL released.

        Idempotent; the engine cannot generate afterwards. Runs by itself at interpreter exit.
        """
        vars(self).pop("generator", None)

    batching = True
    # With alternatives, CTranslate2 keeps every step's full logits until the job ends: sequences x new tokens x
    # vocabulary floats. 512 steps of a 50k vocabulary hold about 200 MB.
    max_alternatives_steps = 512

    def generate(self, jobs: Sequence[TokenRequest], on_step: StepCallback) -> None:
        first = jobs[0]
        sampling = first.sampling
        if sampling.do_sample and sampling.seed is not None:
            self._reseed(sampling.seed)
        failures: list[Exception] = []
        to_step = _StepReader(first.logprobs)

        # Called after each token, on CTranslate2's worker thread: returning True ends that sequence
        # with what it has. An exception escaping here would abort the process. The worker frees this
        # function after the job, so it must not hold the engine: were that the engine's last reference,
        # the generator would be destroyed on its own worker thread, which cannot join itself (abort).
        def step(result: ctranslate2.GenerationStepResult) -> bool:
            try:
                return on_step(to_step(result))
            except Exception as error:  # noqa: BLE001 - re-raised on the calling thread below
                failures.append(error)
                return True

        self.generator.generate_batch(
            [self.tokenizer.tokens(list(job.prompt_ids)) for job in jobs for _ in range(job.n)],
            max_length=max(job.max_new_tokens for job in jobs),  # each sequence stops at its own from on_step
            include_prompt_in_result=False,
            end_token=sorted(self.info.eos_token_ids) or None,
            return_end_token=True,
            repetition_penalty=sampling.repetition_penalty,
            sampling_topk=self._top_k(sampling),
            sampling_topp=sampling.top_p if sampling.do_sample else 1.0,
            sampling_temperature=sampling.temperature if sampling.do_sample else 1.0,
            # The chosen token's log-probability comes with the scores; alternatives need every logit.
            return_scores=first.logprobs is not None,
            return_logits_vocab=bool(first.logprobs),
            callback=step,
        )
        if failures:
            raise failures[0]

    def _top_k(self, sampling: SamplingParams) -> int:
        if not sampling.do_sample:
            return 1  # greedy
        # CTranslate2 refuses a k above the vocabulary; such a k keeps every token, as 0 does.
        return sampling.top_k if sampling.top_k < self.tokenizer.vocab_size else 0

    def _reseed(self, seed: int) -> None:
        # CTranslate2 seeds a worker thread's random generator once, at its first draw, so
        # set_random_seed has no effect on a warm generator (upstream issue #1757). A new
        # generator (about 0.13 s for distilgpt2, by `make bench`) makes seeded sampling reproducible. It replaces the
        # warm one, which is freed first: memory stays flat. Unseeded requests never pay this.
        ctranslate2.set_random_seed(seed % 2**32)
        self.close()
        self.generator = ctranslate2.Generator(**self._generator_args)


class _StepReader:
    """Turns CTranslate2's step results into TokenSteps, with the log-probabilities the job asked for.

    The chosen token's log-probability comes with each result. Alternatives need the logits, which
    CTranslate2 hands over once per step for the whole batch of unfinished sequences: the step's first
    result can read them, and the k-th result of a step is row k.
    """

    def __init__(self, logprobs: int | None) -> None:
        self._logprobs = logprobs
        self._step = -1
        self._rows: np.ndarray | None = None
        self._row = 0

    def __call__(self, result: ctranslate2.GenerationStepResult) -> TokenStep:
        if not self._logprobs:  # None: not asked for; 0: the chosen token's alone, which CTranslate2 computed
            logprob = None if self._logprobs is None else float(result.log_prob)
            return TokenStep(result.batch_id, result.token_id, logprob)
        if result.step != self._step:
            self._step, self._rows, self._row = result.step, np.array(result.logits), 0
        assert self._rows is not None
        logits = self._rows[self._row]
        self._row += 1
        logprob, top = logprobs_of(logits, result.token_id, self._logprobs)
        return TokenStep(result.batch_id, result.token_id, logprob, top)
