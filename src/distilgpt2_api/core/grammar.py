"""Constrained decoding: a grammar each sampled token must keep the answer inside.

A request may carry a `Grammar` (a JSON Schema, a regular expression or a Lark grammar). llguidance
compiles it against the model's tokenizer; at every step a sequence's `Constraint` gives the tokens that
keep its text a prefix of something the grammar accepts, the sampler chooses among those only, and
the sequence ends when the grammar is complete. So an answer that ends that way always matches: only a
cut (max tokens, the time budget) can leave it unfinished.

JSON is written compactly (`{"a": 1, "b": [2, 3]}`: no free-form whitespace, which a small model would
otherwise fill with runs of newlines). A JSON Schema goes through core/schema.py's `prepare_schema`: the mask
enforces what llguidance implements, and every answer the grammar completes is checked against the schema
itself (`Constraint.problem`), so keywords a mask cannot hold (`uniqueItems`, `not`, `if`/`then`, ...) are
still honoured or the answer is flagged. Malformed schemas, patterns and grammars are refused with
llguidance's message. Compiled grammars are cached per source, a bounded number of them (`GrammarCache`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from distilgpt2_api.core.errors import InvalidRequest
from distilgpt2_api.core.schema import JSON_LAYOUT, check_problem, prepare_schema, schema_check

__all__ = ["JSON_LAYOUT", "CompiledGrammar", "Constraint", "Grammar", "GrammarCache", "InvalidGrammar"]

if TYPE_CHECKING:
    import llguidance  # imported when a grammar is first compiled: engines that cannot constrain never load it

GrammarKind = Literal["json_schema", "regex", "lark"]

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

    def llguidance_grammar(self, *, narrow: bool = True) -> str:
        """The grammar in llguidance's own serialization (a JSON Schema's as `prepare_schema` makes it, `narrow`
        or not)."""
        import llguidance

        if self.kind == "json_schema":
            prepared = prepare_schema(json.loads(self.source), narrow=narrow)
            return llguidance.LLMatcher.grammar_from_json_schema(prepared.grammar_schema)
        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.source)
        return llguidance.LLMatcher.grammar_from_lark(self.source)


class Constraint:
    """One sequence's place in its grammar. Not thread-safe: the generating thread owns it."""

    def __init__(
        self,
        matcher: llguidance.LLMatcher,
        vocab_size: int,
        check: Callable[[str], str | None] | None = None,
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._bits = np.zeros(((vocab_size + 31) // 32,), dtype=np.int32)
        self._check, self._decode = check, decode
        self._tokens: list[int] = []  # consumed, for the check of the finished answer

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
        if self._check is not None:
            self._tokens.append(token_id)

    def problem(self) -> str | None:
        """Once `done`: why the answer is not valid after all (a JSON Schema keyword the mask cannot hold, a
        repeated key), or None."""
        if self._check is None or self._decode is None:
            return None
        return self._check(self._decode(self._tokens))


@dataclass(frozen=True)
class CompiledGrammar:
    """A grammar compiled for one tokenizer, at its start: every sequence held to it begins its own `Constraint`."""

    grammar: Grammar
    matcher: llguidance.LLMatcher
    vocab_size: int
    check: Callable[[str], str | None] | None = None  # a JSON Schema's check of a finished answer
    decode: Callable[[list[int]], str] | None = None

    def constraint(self) -> Constraint:
        return Constraint(self.matcher.deep_copy(), self.vocab_size, self.check, self.decode)


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
        check = None
        if grammar.kind == "json_schema":
            check = schema_check(json.loads(grammar.source))
        matcher = CompiledGrammar(grammar, self._compile(grammar), self._tokenizer.vocab_size, check, self._decode)
        with self._lock:
            self._compiled[key] = matcher
            self.compilations += 1
            while len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        return matcher

    def _decode(self, tokens: list[int]) -> str:
        """An answer's text: an end-of-sequence token that ended it is no part of it."""
        return self._tokenizer.decode_str([token for token in tokens if token not in self.eos_token_ids])

    def _compile(self, grammar: Grammar) -> llguidance.LLMatcher:
        import llguidance

        what = {"json_schema": "JSON schema", "regex": "regular expression", "lark": "grammar"}[grammar.kind]
        if grammar.kind == "json_schema":
            problem = check_problem(json.loads(grammar.source))
            if problem is not None:
                raise InvalidGrammar(f"the {what} is not valid: {problem}", grammar.param)
        try:
            serialized, failed, messages = self._serialized(grammar)
        except ValueError as error:
            raise InvalidGrammar(f"the {what} is not valid: {error}", grammar.param) from error
        # A JSON Schema's warnings name what the mask leaves to the check; elsewhere each is something ignored.
        if failed or (messages and grammar.kind != "json_schema"):
            raise InvalidGrammar(f"the {what} cannot be used: {'; '.join(messages)}", grammar.param)
        matcher = llguidance.LLMatcher(self._tokenizer, serialized, log_level=0)
        if matcher.is_error():
            raise InvalidGrammar(f"the {what} cannot be used: {matcher.get_error()}", grammar.param)
        return matcher

    def _serialized(self, grammar: Grammar) -> tuple[str, bool, list[str]]:
        """llguidance's grammar, whether it failed and its messages; a JSON Schema narrowed (core/schema.py) if
        that form compiles, else as written."""
        import llguidance

        if grammar.kind == "json_schema":
            try:
                narrowed = grammar.llguidance_grammar(narrow=True)
                failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(narrowed, self._tokenizer)
                if not failed:
                    return narrowed, failed, messages
            except ValueError:
                pass
        serialized = grammar.llguidance_grammar(narrow=False)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(serialized, self._tokenizer)
        return serialized, failed, messages
