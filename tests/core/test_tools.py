"""Tool calls: the grammar forces calls that parse and validate, and streaming reads them as parsing does.

The grammar tests walk llguidance's token masks at random over the suite's own byte-level BPE (no model, no
download): every answer the grammar lets out must be read back as calls whose arguments fit their schema.
"""

from __future__ import annotations

import json
import random
import re

import jsonschema
import llguidance
import llguidance.numpy
import numpy as np
import pytest

from distilgpt2_api.core.tools import (
    FunctionTool,
    InvalidTools,
    ToolCallDelta,
    ToolCallStream,
    format_tool_call,
    new_call_id,
    parse_tool_calls,
    tool_grammar,
)

from model_factory import build_tokenizer

WEATHER = FunctionTool(
    "get_weather",
    "The weather now in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
ADD = FunctionTool(
    "add-numbers",
    None,
    {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": -99, "maximum": 99},
            "b": {"type": "integer", "minimum": 0, "maximum": 9},
            "exact": {"type": "boolean"},
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "integer", "minimum": 0, "maximum": 90}},
                "required": ["lat"],
                "additionalProperties": False,
            },
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
NOW = FunctionTool(
    "now", "The time; no parameters.", {"type": "object", "properties": {}, "additionalProperties": False}
)
TOOLS = [WEATHER, ADD, NOW]
BY_NAME = {tool.name: tool for tool in TOOLS}


@pytest.fixture(scope="module")
def tokenizer() -> llguidance.LLTokenizer:
    hf = build_tokenizer()
    return llguidance.LLTokenizer(hf.backend_tokenizer.to_str(), eos_token=hf.eos_token_id)


def walk(
    tokenizer: llguidance.LLTokenizer, grammar: str, rng: random.Random, *, first: str | None = None, limit: int = 2000
) -> tuple[str, bool]:
    """A random answer the grammar allows: (text, whether it ended rather than hit `limit` tokens).

    Each step takes a random allowed token, or EOS half the time it is allowed. `first` = "<" or "text" picks the
    first token among those that start with "<" or the others (to reach both branches of `auto`)."""
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar))
    assert not matcher.is_error(), matcher.get_error()
    mask = llguidance.numpy.allocate_token_bitmask(1, tokenizer.vocab_size)
    tokens: list[int] = []
    for step in range(limit):
        if matcher.is_stopped():
            return tokenizer.decode_str(tokens), True
        llguidance.numpy.fill_next_token_bitmask(matcher, mask)
        bits = np.unpackbits(mask[0].view(np.uint8), bitorder="little")[: tokenizer.vocab_size]
        allowed = [int(t) for t in np.flatnonzero(bits)]
        if step == 0 and first is not None:
            allowed = [
                t
                for t in allowed
                if t != tokenizer.eos_token and tokenizer.decode_str([t]).startswith("<") == (first == "<")
            ]
        if tokenizer.eos_token in allowed and rng.random() < 0.5:
            return tokenizer.decode_str(tokens), True
        token = rng.choice([t for t in allowed if t != tokenizer.eos_token] or allowed)
        assert matcher.consume_token(token), matcher.get_error()
        tokens.append(token)
    return tokenizer.decode_str(tokens), False


def assert_valid_call(name: str, arguments: str, tools: list[FunctionTool]) -> None:
    assert name in {tool.name for tool in tools}
    value = json.loads(arguments)
    jsonschema.validate(value, BY_NAME[name].parameters)
    assert arguments == json.dumps(value, ensure_ascii=False), "compact JSON, no free whitespace"


def streamed(text: str, rng: random.Random) -> tuple[str | None, list[tuple[str, str]]]:
    """(content, [(name, arguments)]) from a ToolCallStream fed `text` in random pieces, checking delta shapes."""
    stream = ToolCallStream(TOOLS)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12)))) if len(text) > 1 else []
    deltas: list[ToolCallDelta] = []
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        deltas += stream.feed(text[start:end])
    deltas += stream.finish()
    return assemble(deltas)


def assemble(deltas: list[ToolCallDelta]) -> tuple[str | None, list[tuple[str, str]]]:
    content, calls = "", []
    for delta in deltas:
        if delta.index is None:
            assert delta.id is None and delta.name is None and not delta.arguments
            content += delta.content
        elif delta.index == len(calls):  # a call's first delta: its id and name, no arguments yet
            assert delta.id is not None and re.fullmatch(r"call_[A-Za-z0-9]{24}", delta.id)
            assert delta.name is not None and delta.arguments == ""
            calls.append((delta.name, ""))
        else:
            assert delta.index == len(calls) - 1 and delta.id is None and delta.name is None and not delta.content
            calls[-1] = (calls[-1][0], calls[-1][1] + delta.arguments)
    return content or None, calls


def parsed(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    content, calls = parse_tool_calls(text, TOOLS)
    return content or None, [(call.name, call.arguments) for call in calls]


# ---- the grammar, walked at random ----


@pytest.mark.parametrize("parallel", [False, True], ids=["one", "parallel"])
def test_required_gives_calls_that_fit_their_schemas(tokenizer: llguidance.LLTokenizer, parallel: bool) -> None:
    grammar = tool_grammar(TOOLS, "required", parallel=parallel)
    assert grammar is not None
    rng = random.Random(1)
    counts, names = [], set()
    for _ in range(30):
        text, ended = walk(tokenizer, grammar, rng)
        assert ended, text
        content, calls = parse_tool_calls(text, TOOLS)
        assert content is None and calls, text
        for call in calls:
            assert_valid_call(call.name, call.arguments, TOOLS)
        assert parsed(text) == streamed(text, rng)
        counts.append(len(calls))
        names |= {call.name for call in calls}
    assert names == set(BY_NAME)
    assert (max(counts) > 1) == parallel


def test_a_named_function_is_the_one_call(tokenizer: llguidance.LLTokenizer) -> None:
    grammar = tool_grammar(TOOLS, "add-numbers", parallel=True)  # named: one call, even when parallel
    assert grammar is not None
    rng = random.Random(2)
    for _ in range(20):
        text, ended = walk(tokenizer, grammar, rng)
        assert ended
        content, calls = parse_tool_calls(text, TOOLS)
        assert content is None and [call.name for call in calls] == ["add-numbers"]
        assert_valid_call(calls[0].name, calls[0].arguments, TOOLS)


def test_auto_gives_either_text_or_calls(tokenizer: llguidance.LLTokenizer) -> None:
    grammar = tool_grammar(TOOLS, "auto", parallel=True)
    assert grammar is not None
    rng = random.Random(3)
    for first in ["<", "text"] * 10:
        text, ended = walk(tokenizer, grammar, rng, first=first, limit=2000 if first == "<" else 150)
        content, calls = parse_tool_calls(text, TOOLS)
        if first == "<":
            assert ended and content is None and calls, text
            for call in calls:
                assert_valid_call(call.name, call.arguments, TOOLS)
        else:
            assert not text.startswith("<") and (content, calls) == (text, []), text
        assert parsed(text) == streamed(text, rng)


def test_auto_may_answer_nothing(tokenizer: llguidance.LLTokenizer) -> None:
    grammar = tool_grammar(TOOLS, "auto", parallel=False)
    assert grammar is not None
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar))
    assert matcher.is_accepting()


@pytest.mark.parametrize("choice", ["required", "auto", "get_weather"])
def test_the_wire_format_is_what_the_grammar_accepts(tokenizer: llguidance.LLTokenizer, choice: str) -> None:
    grammar = tool_grammar(TOOLS, choice, parallel=False)
    assert grammar is not None
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar))
    text = format_tool_call("get_weather", '{"city": "Paris", "unit": "celsius"}')
    assert matcher.consume_tokens(tokenizer.tokenize_str(text)), matcher.get_error()
    assert matcher.is_accepting()
    spaced = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar))
    assert not spaced.consume_tokens(tokenizer.tokenize_str(text.replace('": "', '":  "')))


def test_default_parameters_take_any_object() -> None:
    tool = FunctionTool("ping")
    assert tool.parameters == {"type": "object", "properties": {}}
    assert tool_grammar([tool], "required", parallel=False) is not None


def test_none_asks_for_no_grammar() -> None:
    assert tool_grammar(TOOLS, "none", parallel=True) is None


@pytest.mark.parametrize(
    ("tools", "choice", "param", "message"),
    [
        ([], "required", "tool_choice", "there are no tools"),
        (TOOLS, "get_time", "tool_choice", "'get_time', which is not among the tools"),
        ([WEATHER, WEATHER], "auto", "tools", "'get_weather' is defined twice"),
        ([FunctionTool("get weather")], "auto", "tools", "must be 1 to 64 letters"),
        ([FunctionTool("f", None, {"type": "string"})], "auto", "tools", "must describe an object"),
        (
            [WEATHER, FunctionTool("when", None, {"properties": {"days": {"type": "array", "uniqueItems": True}}})],
            "required",
            "tools",
            "function 'when': its parameters schema cannot be enforced: .*uniqueItems",
        ),
    ],
)
def test_tools_that_cannot_be_a_grammar_are_refused(
    tools: list[FunctionTool], choice: str, param: str, message: str
) -> None:
    with pytest.raises(InvalidTools, match=message) as refused:
        tool_grammar(tools, choice, parallel=False)
    assert refused.value.param == param and refused.value.code == "invalid_tools"


# ---- parsing a finished answer ----

CALL = format_tool_call("get_weather", '{"city": "Paris"}')
OTHER = format_tool_call("add-numbers", '{"a": 1, "b": 2}')


def test_text_without_calls_is_content() -> None:
    assert parse_tool_calls("It is sunny. <b>", TOOLS) == ("It is sunny. <b>", [])
    assert parse_tool_calls("", TOOLS) == ("", [])


def test_calls_are_read_with_fresh_ids() -> None:
    content, calls = parse_tool_calls(f"{CALL}\n{OTHER}\n", TOOLS)
    assert content is None
    assert [(c.name, c.arguments) for c in calls] == [
        ("get_weather", '{"city": "Paris"}'),
        ("add-numbers", '{"a": 1, "b": 2}'),
    ]
    assert len({c.id for c in calls}) == 2 and all(re.fullmatch(r"call_[A-Za-z0-9]{24}", c.id) for c in calls)


def test_text_before_the_calls_is_content() -> None:
    assert parsed(f"Let me look.\n\n{CALL}") == ("Let me look.", [("get_weather", '{"city": "Paris"}')])


def test_arguments_in_another_order_are_reserialized() -> None:
    text = '<tool_call>{"arguments":{"city":"Zürich"},"name":"get_weather"}</tool_call>'
    assert parsed(text) == (None, [("get_weather", '{"city": "Zürich"}')])


def test_a_closing_tag_inside_an_argument_is_text() -> None:
    call = format_tool_call("get_weather", '{"city": "</tool_call>}\\""}')
    assert parsed(call) == (None, [("get_weather", '{"city": "</tool_call>}\\""}')])


@pytest.mark.parametrize(
    "text",
    [
        CALL[:-5],  # cut by `length`
        CALL[: CALL.index("Paris")],
        format_tool_call("launch", "{}"),  # not one of the tools
        f"{CALL}\nand then some text",
        '<tool_call>\n{"name": "get_weather", "arguments": "Paris"}\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {}, "extra": 1}\n</tool_call>',
    ],
    ids=["cut", "cut-in-arguments", "unknown", "text-after", "string-arguments", "extra-key"],
)
def test_what_is_not_a_complete_call_stays_content(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) == (text, [])


def test_call_ids() -> None:
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)


# ---- streaming ----

ANSWERS = [
    "",
    "Plain text, with < and <tool and </tool_call> in it.\n",
    "  leading and trailing whitespace \n\n",
    CALL,
    f"Let me look.\n{CALL}\n{OTHER}",
    f"{CALL}\n\n{OTHER}\n",
    format_tool_call("get_weather", '{"city": "{[\\"\\\\"}'),
    '<tool_call>{"arguments":{"city":"Zürich"},"name":"get_weather"}</tool_call>',
    format_tool_call("now", "{}"),
    "a <tool_call> cut short",
]


@pytest.mark.parametrize("text", ANSWERS)
def test_the_stream_adds_up_to_the_parse(text: str) -> None:
    rng = random.Random(text)
    for _ in range(30):
        assert streamed(text, rng) == parsed(text)
    stream = ToolCallStream(TOOLS)  # one character at a time
    deltas = [delta for char in text for delta in stream.feed(char)] + stream.finish()
    assert assemble(deltas) == parsed(text)


def test_content_streams_at_once_except_a_possible_tag() -> None:
    stream = ToolCallStream(TOOLS)
    assert stream.feed("Hello") == [ToolCallDelta(content="Hello")]
    assert stream.feed(" <tool") == []
    assert stream.feed("s> ok") == [ToolCallDelta(content=" <tools> ok")]
    assert stream.feed("\n") == []
    assert stream.finish() == [ToolCallDelta(content="\n")]


def test_arguments_stream_as_they_come() -> None:
    stream = ToolCallStream(TOOLS)
    first, fragment = stream.feed('<tool_call>\n{"name": "get_weather", "arguments": {"ci')
    assert (first.index, first.name, first.arguments) == (0, "get_weather", "") and first.id is not None
    assert fragment == ToolCallDelta(index=0, arguments='{"ci')
    assert stream.feed('ty": "Paris"}}\n</tool') == [ToolCallDelta(index=0, arguments='ty": "Paris"}')]
    assert stream.feed("_call>") == []
    assert stream.finish() == []


def test_a_stream_cut_inside_a_call_keeps_what_it_sent() -> None:
    """As OpenAI's: the arguments so far, where parse_tool_calls (all or nothing) gives the text as content."""
    stream = ToolCallStream(TOOLS)
    deltas = stream.feed(CALL[: CALL.index("Paris")]) + stream.finish()
    assert assemble(deltas) == (None, [("get_weather", '{"city": "')])
