"""What every scheduler shares: turning a request into a validated job, the model's name and chat template.

A request the model cannot take is refused here (InvalidRequest), before it queues and before anything is sent.
"""

from __future__ import annotations

import threading
from collections import deque
from functools import cached_property

from distilgpt2_api.core.chat import ChatTemplate
from distilgpt2_api.core.errors import (
    ChatUnsupported,
    ContextLengthExceeded,
    GrammarUnsupported,
    LogprobsBudgetExceeded,
    TokenBudgetExceeded,
    UnknownToken,
)
from distilgpt2_api.core.grammar import Grammar
from distilgpt2_api.core.request import GenerationRequest, TokenRequest
from distilgpt2_api.core.stream import GenerationResult, GenerationStream, Job, Sink
from distilgpt2_api.engines.base import Kernels, ModelInfo, TextTokenizer

# With alternatives (top logprobs), CTranslate2 keeps every step's full logits until the job ends:
# sequences x max_new_tokens x vocabulary floats. 512 steps of a 50k vocabulary hold about 200 MB.
MAX_ALTERNATIVES_STEPS = 512


class SchedulerBase:
    """The scheduler surface the HTTP layer uses that does not depend on how requests take turns."""

    can_constrain = False  # whether answers can be held to a grammar (structured output, tool calls)

    def __init__(
        self, info: ModelInfo, tokenizer: TextTokenizer, kernels: Kernels, *, max_batch_tokens: int | None
    ) -> None:
        self._info = info
        self._tokenizer = tokenizer
        self.kernels = kernels  # what the engine computes with on this CPU: GET /, /metrics
        self.max_batch_tokens = max_batch_tokens  # None: only the context length bounds a request
        self._waiting: deque[Sink] = deque()  # queued requests, oldest first
        self._lock = threading.Condition()  # guards _waiting (and what a scheduler adds to it)
        self._running: tuple[Sink, ...] = ()  # the requests generating, replaced whole (read by monitoring)

    @property
    def waiting(self) -> int:
        """Requests queued for the model whose clients are still there: a snapshot, for monitoring."""
        with self._lock:
            return sum(not sink.cancelled.is_set() for sink in self._waiting)

    @property
    def running(self) -> int:
        """Requests generating that have not ended yet: a snapshot, for monitoring."""
        return sum(sink.timings.ended is None for sink in self._running)

    @property
    def model_name(self) -> str:
        return self._info.name

    @cached_property
    def chat_template(self) -> ChatTemplate:
        """The model's chat template, compiled once; ChatUnsupported when it has none."""
        info = self._info
        if info.chat_template is None:
            raise ChatUnsupported(
                f"model {info.name!r} has no chat template, so it cannot serve chat: use /v1/completions or /generate"
            )
        return ChatTemplate(info.chat_template, dict(info.special_tokens))

    def stream(self, request: GenerationRequest) -> GenerationStream:
        raise NotImplementedError

    def check_grammar(self, grammar: Grammar) -> None:
        """Refuse `grammar` unless this scheduler can constrain answers to it (InvalidRequest)."""
        raise GrammarUnsupported(grammar.param)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate without blocking the event loop; requests queue in arrival order."""
        stream = self.stream(request)
        try:
            return await stream.collect()
        finally:
            await stream.aclose()

    def _job(self, request: GenerationRequest) -> Job:
        """`request` validated against the model and this server's budgets, its prompt as token ids."""
        if request.grammar is not None:
            self.check_grammar(request.grammar)
        tokenizer = self._tokenizer
        if isinstance(request.prompt, str):
            prompt_ids = tokenizer.encode(request.prompt, add_special_tokens=request.add_special_tokens)
        else:
            prompt_ids = list(request.prompt)
            unknown = next((i for i in prompt_ids if i >= tokenizer.vocab_size), None)
            if unknown is not None:
                raise UnknownToken(unknown, tokenizer.vocab_size)
        context = self._info.context_length
        if len(prompt_ids) + request.max_new_tokens > context:
            raise ContextLengthExceeded(len(prompt_ids), request.max_new_tokens, context)
        sampling = request.sampling
        # Greedy decoding gives identical sequences: compute one and repeat it.
        sequences = request.n if sampling.do_sample else 1
        # Each sequence holds its own copy of the prompt: memory and prefill time grow with the product.
        tokens = sequences * (len(prompt_ids) + request.max_new_tokens)
        if self.max_batch_tokens is not None and tokens > self.max_batch_tokens:
            raise TokenBudgetExceeded(sequences, len(prompt_ids), request.max_new_tokens, self.max_batch_tokens)
        if request.logprobs and sequences * request.max_new_tokens > MAX_ALTERNATIVES_STEPS:
            raise LogprobsBudgetExceeded(sequences, request.max_new_tokens, MAX_ALTERNATIVES_STEPS)
        job = TokenRequest(
            prompt_ids=tuple(prompt_ids),
            n=sequences,
            max_new_tokens=request.max_new_tokens,
            sampling=sampling,
            logprobs=request.logprobs,
        )
        return Job(request, job, len(prompt_ids))
