"""The reference engine: transformers + torch, fp32. Slower, but it runs any causal LM directory."""

from __future__ import annotations

import time

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from distilgpt2_api.core.request import TokenRequest
from distilgpt2_api.engines.base import PREPARE_HINT, ModelInfo, ModelLoadError, TextTokenizer


class TransformersEngine:
    def __init__(self, info: ModelInfo, *, threads: int) -> None:
        self.info = info
        self._threads = threads
        torch.set_num_threads(threads)
        transformers_logging.disable_progress_bar()  # progress bars are noise in service logs
        self.tokenizer = TextTokenizer(info.path)
        # transformers' stop strings need its own tokenizer class: the same tokenizer.json, wrapped.
        self._stop_tokenizer = PreTrainedTokenizerFast(tokenizer_object=self.tokenizer.backend)
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

    def generate(self, job: TokenRequest) -> list[list[int]]:
        sampling, deadline = job.sampling, job.deadline
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
            stop_strings=list(job.stop) or None,
            # transformers counts time from the call: the one place the deadline becomes relative.
            max_time=None if deadline is None else max(0.0, deadline - time.monotonic()),
            **sampled,
        )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                tokenizer=self._stop_tokenizer if job.stop else None,
            )
        return [self._trim(row[len(job.prompt_ids) :].tolist()) for row in output]

    def _trim(self, new_ids: list[int]) -> list[int]:
        """Cut the padding after a finished row, keeping an EOS token."""
        for index, token in enumerate(new_ids):
            if token in self.info.eos_token_ids:
                return new_ids[: index + 1]
            if token == self._pad_id:
                return new_ids[:index]
        return new_ids
