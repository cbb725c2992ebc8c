"""The reference engine: transformers + torch, fp32. Slower, but it runs any causal LM directory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.utils import logging as transformers_logging

from distilgpt2_api.engines.base import (
    PREPARE_HINT,
    Engine,
    Kernels,
    ModelInfo,
    ModelLoadError,
    StepCallback,
    TextTokenizer,
    TokenRequest,
    TokenStep,
    cpu_name,
    logprobs_of,
)


class TransformersEngine(Engine):
    def __init__(self, info: ModelInfo, *, threads: int) -> None:
        self.info = info
        self._threads = threads
        torch.set_num_threads(threads)
        transformers_logging.disable_progress_bar()  # progress bars are noise in service logs
        self.tokenizer = TextTokenizer(info.path)
        capability = torch.backends.cpu.get_cpu_capability()
        self.kernels = Kernels("transformers", cpu_name(), f"float32, {capability}", "torch's CPU dispatch", threads)
        try:
            # local_files_only: a bad path must fail here, never turn into a Hub download.
            self.model = AutoModelForCausalLM.from_pretrained(
                info.path, local_files_only=True, trust_remote_code=False, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load the model in MODEL_DIR={info.path}: {error}. {PREPARE_HINT}") from error
        self.model.eval()
        pad = self.model.generation_config.pad_token_id
        # Finished rows are padded; GPT-2 has no pad token, so it pads with EOS.
        self._pad_id: int = pad if isinstance(pad, int) else min(info.eos_token_ids)

    def close(self) -> None:
        """Nothing native outlives the interpreter here: torch's thread pool shuts down with it."""

    batching = False  # the reference engine: one job per call, no padding to get right

    def generate(self, jobs: Sequence[TokenRequest], on_step: StepCallback) -> None:
        (job,) = jobs
        sampling = job.sampling
        # Under OpenMP the thread count is per OS thread: apply it in the worker that generates.
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        if sampling.do_sample and sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        input_ids = torch.tensor([list(job.prompt_ids)])
        sampled = (
            {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
            if sampling.do_sample
            else {}
        )
        config = GenerationConfig(
            max_new_tokens=job.max_new_tokens,
            do_sample=sampling.do_sample,
            num_return_sequences=job.n,
            repetition_penalty=sampling.repetition_penalty,
            eos_token_id=sorted(self.info.eos_token_ids),
            pad_token_id=self._pad_id,
            **sampled,
        )
        steps = _Steps(on_step, job, self.info.eos_token_ids)
        # The model's own logits for the last position, as each forward pass leaves them (before any
        # processing: logprobs describe the model's distribution, whatever the sampling settings).
        hook = self.model.register_forward_hook(steps.keep_logits) if job.logprobs is not None else None
        try:
            with torch.inference_mode():
                self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([steps]),
                )
        finally:
            if hook is not None:
                hook.remove()


class _Steps(StoppingCriteria):
    """Passes each new token to the step callback; a row ends when it returns True or the token is an EOS."""

    def __init__(self, on_step: StepCallback, job: TokenRequest, eos_token_ids: frozenset[int]) -> None:
        super().__init__()
        self._on_step = on_step
        self._logprobs = job.logprobs
        self._eos = eos_token_ids
        self._ended = [False] * job.n
        self._logits: torch.Tensor | None = None

    def keep_logits(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self._logits = output.logits[:, -1, :]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()
        for row, token in enumerate(tokens):
            if not self._ended[row]:  # finished rows only receive padding
                self._ended[row] = self._on_step(self._step(row, token)) or token in self._eos
        return torch.tensor(self._ended, dtype=torch.bool)  # type: ignore[return-value]

    def _step(self, row: int, token: int) -> TokenStep:
        if self._logprobs is None or self._logits is None:
            return TokenStep(row, token)
        logprob, top = logprobs_of(self._logits[row].float().numpy(), token, self._logprobs)
        return TokenStep(row, token, logprob, top)
