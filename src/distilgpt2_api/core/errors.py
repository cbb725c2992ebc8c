"""Why the core refuses a request: each maps to one HTTP status in the HTTP surface."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request the model cannot take: a 400 with `code` (and the parameter to change), before any generation."""

    status = 400
    code = "invalid_request"
    param: str | None = None


class ModelNotFound(InvalidRequest):
    """The request names a model other than the one served: requests never choose what is loaded."""

    status = 404
    code = "model_not_found"
    param = "model"


class UnknownToken(InvalidRequest):
    """A prompt given as token ids (or a logit bias) names one the model's vocabulary does not have."""

    code = "unknown_token"

    def __init__(self, token_id: int, vocab_size: int, param: str = "prompt") -> None:
        super().__init__(f"token id {token_id} is not in the model's vocabulary (size {vocab_size})")
        self.param = param


class RequestTooLarge(InvalidRequest):
    code = "request_too_large"
    param = "max_new_tokens"


class ContextLengthExceeded(RequestTooLarge):
    """Prompt tokens plus max_new_tokens do not fit in the model's context window."""

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: together "
            f"{prompt_tokens + max_new_tokens}, more than the model's context of {context_length} tokens"
        )


class TokenBudgetExceeded(RequestTooLarge):
    """Sequences x (prompt + new tokens) is over MAX_BATCH_TOKENS: it would not fit the memory or the time."""

    code = "token_budget_exceeded"

    def __init__(self, sequences: int, prompt_tokens: int, max_new_tokens: int, budget: int) -> None:
        super().__init__(
            f"{sequences} sampled sequence(s) x ({prompt_tokens} prompt + {max_new_tokens} new tokens) = "
            f"{sequences * (prompt_tokens + max_new_tokens)} tokens, more than this server's budget of {budget} "
            "per request (MAX_BATCH_TOKENS): lower num_return_sequences / n, max_new_tokens or the prompt"
        )


class TooManyChoices(InvalidRequest):
    """Several prompts with `n` choices each: more choices in all than one request may have."""

    code = "too_many_choices"
    param = "n"

    def __init__(self, prompts: int, n: int, limit: int) -> None:
        super().__init__(f"{prompts} prompts x n={n}: more than this server's {limit} choices")


class LogprobsBudgetExceeded(InvalidRequest):
    """Alternatives (top logprobs) keep every step's logits until the request ends: their steps are bounded."""

    code = "logprobs_budget_exceeded"
    param = "logprobs"

    def __init__(self, sequences: int, max_new_tokens: int, budget: int) -> None:
        super().__init__(
            f"with alternative tokens (top logprobs), {sequences} sequence(s) x {max_new_tokens} new tokens = "
            f"{sequences * max_new_tokens} steps, more than this server's {budget}: lower n or max_tokens, "
            "or ask for the chosen tokens' logprobs only"
        )


class DeadlineExceeded(RuntimeError):
    """The request's time budget ran out before generation could start (it waited in the queue)."""


class ChatUnsupported(InvalidRequest):
    """The model has no chat template (distilgpt2 has none)."""

    code = "chat_template_missing"
    param = "messages"


class ChatTemplateFailed(InvalidRequest):
    """The model's chat template refused the conversation (its `raise_exception`) or failed to render it."""

    code = "chat_template_error"
    param = "messages"


class TooManySequences(RequestTooLarge):
    """More sampled sequences than the step loop runs at once (its engine's KV slots)."""

    code = "too_many_sequences"
    param = "n"

    def __init__(self, sequences: int, slots: int) -> None:
        super().__init__(f"{sequences} sampled sequences, more than the {slots} this server runs at once: lower n")


class UnsupportedByEngine(InvalidRequest):
    """What needs a step-level engine, one whose every step's logits the loop reads and can change."""

    code = "unsupported_by_engine"

    def __init__(self, what: str, param: str | None) -> None:
        super().__init__(
            f"{what} needs the llama.cpp engine (ENGINE=llamacpp), which chooses every token itself; this server's "
            "engine decides each call as a whole"
        )
        self.param = param


class GrammarUnsupported(UnsupportedByEngine):
    """Structured output on an engine that cannot mask a step's logits."""

    def __init__(self, param: str | None) -> None:
        super().__init__("structured output (response_format, tools, grammar)", param)


class MinTokensOverMax(InvalidRequest):
    code = "min_tokens_over_max"
    param = "min_tokens"

    def __init__(self, min_tokens: int, max_new_tokens: int) -> None:
        super().__init__(f"min_tokens is {min_tokens}, more than the {max_new_tokens} tokens the answer may have")


class EmbeddingOnly(InvalidRequest):
    """The served model only embeds (a sentence-embedding model, no language-model head): it cannot generate."""

    code = "embedding_model"
    param = "model"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"model {model!r} only embeds: it has no language-model head to generate text; use /v1/embeddings"
        )


class EmbeddingsUnsupported(InvalidRequest):
    """Embeddings on an engine that cannot compute them (CTranslate2, transformers)."""

    code = "unsupported_by_engine"
    param = "model"

    def __init__(self) -> None:
        super().__init__(
            "embeddings need the llama.cpp engine (ENGINE=llamacpp), which runs a pooled embedding context beside "
            "generation; this server's engine cannot compute them"
        )


class EmptyInput(InvalidRequest):
    code = "empty_input"
    param = "input"

    def __init__(self, index: int) -> None:
        super().__init__(f"input {index} has no tokens: there is nothing to embed")


class InputTooLong(RequestTooLarge):
    """An input longer than the engine embeds at once: refused, never silently truncated."""

    code = "context_length_exceeded"
    param = "input"

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"input {index} is {tokens} tokens, more than the {limit} this server embeds in one input: shorten or "
            "split it (inputs are never truncated)"
        )


class EmbeddingBudgetExceeded(RequestTooLarge):
    """Every input's tokens together are over MAX_BATCH_TOKENS."""

    code = "token_budget_exceeded"
    param = "input"

    def __init__(self, tokens: int, budget: int) -> None:
        super().__init__(
            f"the inputs are {tokens} tokens together, more than this server's budget of {budget} per request "
            "(MAX_BATCH_TOKENS): send fewer or shorter inputs"
        )


class DimensionsUnsupported(InvalidRequest):
    code = "invalid_dimensions"
    param = "dimensions"

    def __init__(self, dimensions: int, size: int) -> None:
        super().__init__(f"dimensions is {dimensions}, but this model's embeddings have {size}: ask for 1 to {size}")
