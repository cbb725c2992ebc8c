"""One generated sequence as it grows: token ids in, text the client may see out, and why it ended.

Text leaves only when it is final. A token that ends inside a UTF-8 character adds nothing until the
character is complete (the `tokenizers` library's DecodeStream), and tokens whose text could still
become the start of a stop string are held back until it is clear they do not.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from tokenizers.decoders import DecodeStream

from distilgpt2_api.core.stop import cut_at_stop, stop_prefix_start
from distilgpt2_api.engines.base import TextTokenizer, TokenStep

if TYPE_CHECKING:
    from distilgpt2_api.core.validation import ValidRequest

# schema_violation: the grammar completed, but the answer fails its JSON Schema's check (core/schema.py).
FinishReason = Literal["length", "stop", "eos", "time_limit", "schema_violation"]


@dataclass(frozen=True)
class TokenLogprob:
    id: int
    token: str  # the token's own text
    logprob: float


@dataclass(frozen=True)
class GeneratedToken:
    """A token the client sees, with what it added to the text and, if asked for, its log-probabilities."""

    id: int
    text: str  # what it added to the visible text: "" for a special token or an unfinished character
    token: str  # its own text, as a tokenizer shows one token
    special: bool
    logprob: float | None = None
    top_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Delta:
    """What one choice gained since its previous delta; the last one has its finish_reason."""

    index: int
    text: str
    tokens: tuple[GeneratedToken, ...]
    finish_reason: FinishReason | None
    completion_tokens: int  # generated so far, every token the model computed (EOS and stop strings included)
    end_token: GeneratedToken | None = None  # with the finish_reason: the last token generated (an EOS, say)
    stop_sequence: str | None = None  # with the finish_reason `stop`: the stop string that ended it, if one did


class Sequence:
    """The state of one sequence of a request. Not thread-safe: one engine thread feeds it."""

    @classmethod
    def for_request(cls, tokenizer: TextTokenizer, request: ValidRequest, eos_token_ids: frozenset[int]) -> Sequence:
        """A sequence of `request`: its max_new_tokens and stop strings end it, and the model's EOS."""
        return cls(tokenizer, max_new_tokens=request.max_new_tokens, stop=request.stop, eos_token_ids=eos_token_ids)

    def __init__(
        self,
        tokenizer: TextTokenizer,
        *,
        max_new_tokens: int,
        stop: tuple[str, ...],
        eos_token_ids: frozenset[int],
    ) -> None:
        self._tokenizer = tokenizer
        self._max_new_tokens = max_new_tokens
        self._stop = stop
        self._eos = eos_token_ids
        self._decoder = DecodeStream(skip_special_tokens=True)
        self._held: list[GeneratedToken] = []  # final text, but possibly the start of a stop string
        self._ready: list[GeneratedToken] = []  # released, not yet taken
        self.finish_reason: FinishReason | None = None
        self.stop_sequence: str | None = None  # the stop string that ended it
        self._reported = False
        self._last: GeneratedToken | None = None
        self.completion_tokens = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, step: TokenStep) -> None:
        """Take the next token; it may end the sequence (EOS, a stop string, max_new_tokens)."""
        if self.finished:
            return
        self.completion_tokens += 1
        self._last = self._token(step)
        if step.token_id in self._eos:
            self.finish("eos")
            return
        self._held.append(self._last)
        held_text = "".join(token.text for token in self._held)
        cut = cut_at_stop(held_text, self._stop)
        if cut is not None:
            self._release_until(len(cut[0]))
            self.finish_reason, self.stop_sequence = "stop", cut[1]
            return
        # Keep back the tokens from the one where a stop string could begin.
        start = stop_prefix_start(held_text, self._stop)
        self._release_until(start, whole_tokens_only=True)
        if self.completion_tokens >= self._max_new_tokens:
            self.finish("length")

    def finish(self, reason: FinishReason, *, grammar_complete: bool = False) -> None:
        """End here (EOS, length, time limit): held-back text did not become a stop string, so it is released.

        `grammar_complete`: the answer's grammar is complete, which says more than a reason given by the same
        token and not yet sent: the last token allowed was also the last of max_tokens (`stop`), or an EOS
        ended an answer that fails its check (`schema_violation`)."""
        replaces = grammar_complete and not self._reported
        if replaces and (self.finish_reason == "length" or reason == "schema_violation"):
            self.finish_reason = reason
        if self.finished:
            return
        self._ready.extend(self._held)
        self._held.clear()
        self.finish_reason = reason

    def take(self, index: int) -> Delta | None:
        """What was released since the last take, as choice `index`; None if nothing new happened."""
        newly_finished = self.finished and not self._reported
        if not self._ready and not newly_finished:
            return None
        tokens, self._ready = tuple(self._ready), []
        self._reported = self.finished
        text = "".join(token.text for token in tokens)
        end = self._last if self.finished else None
        return Delta(index, text, tokens, self.finish_reason, self.completion_tokens, end, self.stop_sequence)

    def _release_until(self, chars: int, *, whole_tokens_only: bool = False) -> None:
        """Release held tokens covering the first `chars` characters of the held text.

        A token that straddles the boundary is released cut (a stop string begins inside it), or kept back
        whole when `whole_tokens_only`.
        """
        released = 0
        while self._held and released < chars:
            token = self._held[0]
            if released + len(token.text) > chars:
                if whole_tokens_only:
                    break
                token = replace(token, text=token.text[: chars - released])
            self._ready.append(token)
            released += len(self._held.pop(0).text)
        if not whole_tokens_only:
            self._held.clear()  # the rest is the stop string and whatever followed it

    def _token(self, step: TokenStep) -> GeneratedToken:
        backend = self._tokenizer.backend
        text = self._decoder.step(backend, step.token_id) or ""
        return GeneratedToken(
            id=step.token_id,
            text=text,
            token=self._tokenizer.token_text(step.token_id),
            special=self._tokenizer.is_special(step.token_id),
            logprob=step.logprob,
            top_logprobs=tuple(
                TokenLogprob(token_id, self._tokenizer.token_text(token_id), logprob)
                for token_id, logprob in step.top_logprobs
            ),
        )
