"""Constrained decoding: a grammar each sampled token must keep the answer inside.

A request may carry a `Grammar` (a JSON Schema, a regular expression or a Lark grammar). llguidance
compiles it against the model's tokenizer; at every step a sequence's `Constraint` gives the tokens that
keep its text a prefix of something the grammar accepts, the sampler chooses among those only, and
the sequence ends when the grammar is complete. So an answer that ends that way always matches: only a
cut (max tokens, the time budget) can leave it unfinished.

JSON is written compactly (`{"a": 1, "b": [2, 3]}`: no free-form whitespace, which a small model would
otherwise fill with runs of newlines). Schema keywords llguidance does not implement (`not`,
`uniqueItems`, `if`/`then`, ...) and malformed schemas or patterns are refused with its message, never
ignored. Compiled grammars are cached per source, a bounded number of them (`GrammarCache`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from distilgpt2_api.core.errors import InvalidRequest

if TYPE_CHECKING:
    import llguidance  # imported when a grammar is first compiled: engines that cannot constrain never load it

GrammarKind = Literal["json_schema", "regex", "lark"]

# How llguidance writes JSON (answers and tool-call arguments): Python's default separators, no other whitespace.
JSON_LAYOUT: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT: Mapping[str, Any] = {"type": "object"}
GRAMMAR_CACHE_SIZE = 64  # compiled grammars kept per instance (the least recently used goes first)


class InvalidGrammar(InvalidRequest):
    """A schema, pattern or grammar llguidance cannot compile, or one using what it does not implement."""

    code = "invalid_grammar"

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Grammar:
    """What the answer must match. `param` names the request field it came from, for error messages."""

    kind: GrammarKind
    source: str  # a JSON Schema as JSON text, a regular expression, or a Lark grammar
    param: str | None = None

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | bool, param: str | None = None) -> Grammar:
        """An answer that is JSON valid against `schema` (its keys keep their order: it is the output's)."""
        return cls("json_schema", json.dumps(schema, ensure_ascii=False), param)

    @classmethod
    def json_object(cls, param: str | None = None) -> Grammar:
        """Any JSON object."""
        return cls.json_schema(ANY_JSON_OBJECT, param)

    def llguidance_grammar(self) -> str:
        """The grammar in llguidance's own serialization."""
        import llguidance

        if self.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(self.source, overrides=JSON_LAYOUT)  # type: ignore[arg-type]
        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.source)
        return llguidance.LLMatcher.grammar_from_lark(self.source)


class Constraint:
    """One sequence's place in its grammar. Not thread-safe: the generating thread owns it."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._bits = np.zeros(((vocab_size + 31) // 32,), dtype=np.int32)

    @property
    def done(self) -> bool:
        """The grammar is complete: nothing but the end may follow."""
        return self._matcher.is_stopped()

    def allowed(self, size: int) -> np.ndarray:
        """Which of `size` token ids may come next (a bool mask); ids beyond the tokenizer's never may."""
        matcher = self._matcher
        matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if matcher.is_error():
            raise RuntimeError(f"the grammar cannot go on: {matcher.get_error()}")
        mask = np.unpackbits(self._bits.view(np.uint8), bitorder="little").astype(bool)
        if mask.size >= size:
            return mask[:size]
        return np.concatenate([mask, np.zeros(size - mask.size, dtype=bool)])

    def advance(self, token_id: int) -> None:
        """`token_id` (one `allowed` gave) comes next."""
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(f"the grammar refused token {token_id}: {self._matcher.get_error()}")


@dataclass(frozen=True)
class CompiledGrammar:
    """A grammar compiled for one tokenizer, at its start: every sequence held to it begins its own `Constraint`."""

    grammar: Grammar
    matcher: llguidance.LLMatcher
    vocab_size: int

    def constraint(self) -> Constraint:
        return Constraint(self.matcher.deep_copy(), self.vocab_size)


class GrammarCache:
    """Grammars compiled for one model's tokenizer, the last `size` used kept. Thread-safe."""

    def __init__(self, tokenizer_json: str, eos_token_ids: Iterable[int], size: int = GRAMMAR_CACHE_SIZE) -> None:
        import llguidance

        eos = sorted(eos_token_ids)
        self.eos_token_ids = tuple(eos)
        self._tokenizer = llguidance.LLTokenizer(tokenizer_json, eos_token=eos or None)
        self._size = max(1, size)
        self._compiled: OrderedDict[tuple[GrammarKind, str], CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.compilations = 0  # grammars compiled (cache misses), for tests and benchmarks

    def constraint(self, grammar: Grammar) -> Constraint:
        """A fresh position at the start of `grammar`; InvalidGrammar if it cannot be compiled."""
        return self.compiled(grammar).constraint()

    def compiled(self, grammar: Grammar) -> CompiledGrammar:
        """`grammar` compiled, once while it stays cached; InvalidGrammar if it cannot be."""
        key = (grammar.kind, grammar.source)
        with self._lock:
            matcher = self._compiled.get(key)
            if matcher is not None:
                self._compiled.move_to_end(key)
                return matcher
        matcher = CompiledGrammar(grammar, self._compile(grammar), self._tokenizer.vocab_size)
        with self._lock:
            self._compiled[key] = matcher
            self.compilations += 1
            while len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        return matcher

    def _compile(self, grammar: Grammar) -> llguidance.LLMatcher:
        import llguidance

        what = {"json_schema": "JSON schema", "regex": "regular expression", "lark": "grammar"}[grammar.kind]
        try:
            serialized = grammar.llguidance_grammar()
        except ValueError as error:
            raise InvalidGrammar(f"the {what} is not valid: {error}", grammar.param) from error
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(serialized, self._tokenizer)
        if failed or messages:  # warnings too: each names something of the schema that would be ignored
            raise InvalidGrammar(f"the {what} cannot be used: {'; '.join(messages)}", grammar.param)
        matcher = llguidance.LLMatcher(self._tokenizer, serialized, log_level=0)
        if matcher.is_error():
            raise InvalidGrammar(f"the {what} cannot be used: {matcher.get_error()}", grammar.param)
        return matcher
