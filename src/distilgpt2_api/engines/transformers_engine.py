"""The reference engine: transformers + torch, fp32. Slower, but it runs any causal LM directory."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.utils import logging as transformers_logging

from distilgpt2_api.engines.base import PREPARE_HINT, GenerationRequest, ModelInfo, ModelLoadError


class TransformersEngine:
    def __init__(self, info: ModelInfo, *, threads: int) -> None:
        self.info = info
        self._threads = threads
        torch.set_num_threads(threads)
        transformers_logging.disable_progress_bar()  # progress bars are noise in service logs
        try:
            # local_files_only: a bad path must fail here, never turn into a Hub download.
            self.tokenizer = AutoTokenizer.from_pretrained(info.path, local_files_only=True, trust_remote_code=False)
            self.model = AutoModelForCausalLM.from_pretrained(
                info.path, local_files_only=True, trust_remote_code=False, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load the model in MODEL_DIR={info.path}: {error}. {PREPARE_HINT}") from error
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        # Finished rows are padded; GPT-2 has no pad token, so it pads with EOS.
        self._pad_id: int = pad if pad is not None else min(info.eos_token_ids | {self.tokenizer.eos_token_id})

    def close(self) -> None:
        """Nothing native outlives the interpreter here: torch's thread pool shuts down with it."""

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def generate(
        self, prompt_ids: list[int], request: GenerationRequest, *, sequences: int, max_time: float | None
    ) -> list[list[int]]:
        # Under OpenMP the thread count is per OS thread: apply it in the worker that generates.
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        if request.seed is not None:
            torch.manual_seed(request.seed)
        input_ids = torch.tensor([prompt_ids])
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=self._generation_config(request, sequences, max_time),
                tokenizer=self.tokenizer if request.stop else None,
            )
        return [self._trim(row[len(prompt_ids) :].tolist()) for row in output]

    def _trim(self, new_ids: list[int]) -> list[int]:
        """Cut the padding after a finished row, keeping an EOS token."""
        for index, token in enumerate(new_ids):
            if token in self.info.eos_token_ids:
                return new_ids[: index + 1]
            if token == self._pad_id:
                return new_ids[:index]
        return new_ids

    def _generation_config(
        self, request: GenerationRequest, sequences: int, max_time: float | None
    ) -> GenerationConfig:
        sampling = (
            {"temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k}
            if request.do_sample
            else {}
        )
        return GenerationConfig(
            max_new_tokens=request.max_new_tokens,
            do_sample=request.do_sample,
            num_return_sequences=sequences,
            repetition_penalty=request.repetition_penalty,
            eos_token_id=sorted(self.info.eos_token_ids),
            pad_token_id=self._pad_id,
            stop_strings=list(request.stop) or None,
            max_time=max_time,  # stops cleanly, keeping the tokens generated so far
            **sampling,
        )
