"""Text generation on a loaded model: one request at a time, off the event loop."""

from __future__ import annotations

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import GenerationConfig

from distilgpt2_api.model_loading import LoadedModel

FinishReason = Literal["length", "stop", "eos", "time_limit"]


class ContextLengthExceeded(ValueError):
    """Prompt tokens plus max_new_tokens do not fit in the model's context window."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        super().__init__(
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: together "
            f"{prompt_tokens + max_new_tokens}, more than the model's context of {context_length} tokens"
        )


class DeadlineExceeded(RuntimeError):
    """The request's time budget ran out before generation could start (it waited in the queue)."""


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. Sampling fields apply only when do_sample is true."""

    prompt: str
    max_new_tokens: int
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k filtering
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    deadline: float | None = None  # time.monotonic() by which generation must have returned


@dataclass(frozen=True)
class Completion:
    """One generated continuation (without the prompt)."""

    text: str
    finish_reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True)
class GenerationResult:
    completions: list[Completion]
    prompt_tokens: int
    seed: int | None  # the seed sampling used, so a sampled result can be reproduced
    seconds: float  # time spent generating

    @property
    def completion_tokens(self) -> int:
        return sum(completion.completion_tokens for completion in self.completions)


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """The text before the earliest stop string, or None if none occurs."""
    positions = [index for index in (text.find(s) for s in stop) if index >= 0]
    return text[: min(positions)] if positions else None


class TextGenerator:
    """Runs generation for a loaded model.

    Generation is CPU-bound and torch already spreads one generation over every
    configured core, so requests run one at a time on a single worker thread:
    the event loop stays free and concurrent requests never oversubscribe cores.
    """

    def __init__(self, loaded: LoadedModel, *, torch_threads: int) -> None:
        self.loaded = loaded
        pad_id = loaded.tokenizer.pad_token_id
        # Finished rows are padded; GPT-2 has no pad token, so it pads with EOS.
        self._pad_id: int = pad_id if pad_id is not None else min(loaded.eos_token_ids)
        self._end_ids = loaded.eos_token_ids | {self._pad_id}
        # torch's thread setting is per OS thread under OpenMP: set it in the worker too.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="generate", initializer=torch.set_num_threads, initargs=(torch_threads,)
        )

    @property
    def model_name(self) -> str:
        return self.loaded.name

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate without blocking the event loop; requests queue in arrival order."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.generate_blocking, request)

    def generate_blocking(self, request: GenerationRequest) -> GenerationResult:
        """Generate on the calling thread. Call through `generate` when serving."""
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        inputs = tokenizer(request.prompt, return_tensors="pt")
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens + request.max_new_tokens > self.loaded.context_length:
            raise ContextLengthExceeded(prompt_tokens, request.max_new_tokens, self.loaded.context_length)

        max_time = None
        if request.deadline is not None:
            max_time = request.deadline - time.monotonic()
            if max_time <= 0:
                raise DeadlineExceeded("the request's time budget ran out while it waited for the model")

        seed = None
        if request.do_sample:
            seed = request.seed if request.seed is not None else secrets.randbits(63)
            torch.manual_seed(seed)
        # Greedy decoding gives identical sequences: compute one and repeat it.
        runs = request.num_return_sequences if request.do_sample else 1
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                generation_config=self._generation_config(request, runs, max_time),
                tokenizer=tokenizer if request.stop else None,
            )
        seconds = time.perf_counter() - started
        completions = [self._completion(row[prompt_tokens:].tolist(), request) for row in output]
        if not request.do_sample:
            completions = completions * request.num_return_sequences
        return GenerationResult(completions=completions, prompt_tokens=prompt_tokens, seed=seed, seconds=seconds)

    def _generation_config(self, request: GenerationRequest, runs: int, max_time: float | None) -> GenerationConfig:
        eos_ids = sorted(self.loaded.eos_token_ids)
        sampling = (
            {"temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k}
            if request.do_sample
            else {}
        )
        return GenerationConfig(
            max_new_tokens=request.max_new_tokens,
            do_sample=request.do_sample,
            num_return_sequences=runs,
            repetition_penalty=request.repetition_penalty,
            eos_token_id=eos_ids,
            pad_token_id=self._pad_id,
            stop_strings=list(request.stop) or None,
            max_time=max_time,  # stops cleanly, keeping the tokens generated so far
            **sampling,
        )

    def _completion(self, new_ids: list[int], request: GenerationRequest) -> Completion:
        end = next((i for i, token in enumerate(new_ids) if token in self._end_ids), len(new_ids))
        generated = new_ids[:end]
        text = self.loaded.tokenizer.decode(generated, skip_special_tokens=True)
        cut = _cut_at_stop(text, request.stop)
        if cut is not None:
            return Completion(text=cut, finish_reason="stop", completion_tokens=len(generated))
        if end < len(new_ids) and new_ids[end] in self.loaded.eos_token_ids:
            # The model computed the EOS token too, so it counts as generated.
            return Completion(text=text, finish_reason="eos", completion_tokens=len(generated) + 1)
        # Short of max_new_tokens with no EOS or stop string: only the time budget stops that.
        reason: FinishReason = "length" if len(generated) >= request.max_new_tokens else "time_limit"
        return Completion(text=text, finish_reason=reason, completion_tokens=len(generated))
