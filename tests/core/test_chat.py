"""Chat templates render as Hugging Face renders them, without transformers at serving time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from distilgpt2_api.core.batch import BatchScheduler
from distilgpt2_api.core.chat import TOOLS_PROMPT, ChatMessage, ChatTemplate
from distilgpt2_api.core.errors import ChatTemplateFailed, ChatUnsupported
from distilgpt2_api.core.tools import FunctionTool, ToolCall
from distilgpt2_api.engines import ModelInfo, load_engine

from model_factory import CHATML, build_tokenizer

CONVERSATIONS = [
    [ChatMessage("user", "Hello there")],
    [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hey"),
        ChatMessage("user", "Why?"),
    ],
    [ChatMessage("user", "Ünïcödé and\nnew lines {{ not a template }}")],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "multi-turn", "unicode"])
def test_renders_as_transformers_does(chat_model_dir: Path, messages: list[ChatMessage]) -> None:
    info = ModelInfo.read(chat_model_dir)
    assert info.chat_template is not None
    mine = ChatTemplate(info.chat_template, dict(info.special_tokens)).render(messages)
    theirs = AutoTokenizer.from_pretrained(chat_model_dir).apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], tokenize=False, add_generation_prompt=True
    )
    assert mine == theirs
    assert mine.endswith("<|im_start|>assistant\n")


def test_template_can_refuse_a_conversation() -> None:
    source = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('conversations start with the user') }}{% endif %}"
    )
    template = ChatTemplate(source, {})
    assert template.render([ChatMessage("user", "hi")]) == ""
    with pytest.raises(ChatTemplateFailed, match="conversations start with the user"):
        template.render([ChatMessage("assistant", "hi")])


def test_templates_run_sandboxed() -> None:
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateFailed):
        ChatTemplate(escape, {}).render([ChatMessage("user", "hi")])


def test_special_tokens_reach_the_template() -> None:
    template = ChatTemplate(
        "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}", {"bos_token": "<s>", "eos_token": "</s>"}
    )
    assert template.render([ChatMessage("user", "x")]) == "<s>x</s>"


def test_a_model_without_a_template_cannot_chat(model_dir: Path) -> None:
    scheduler = BatchScheduler(load_engine(model_dir, "ctranslate2", threads=1))
    with pytest.raises(ChatUnsupported, match="has no chat template"):
        _ = scheduler.chat_template


# ---- tools ----

WEATHER = FunctionTool(
    "get_weather", "The weather now.", {"type": "object", "properties": {"city": {"type": "string"}}}
)
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL_TURNS = [
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", "", tool_calls=(CALL,)),
    ChatMessage("tool", "18 degrees", tool_call_id="call_1"),
]
# A small template that reads `tools`, calls and results as transformers passes them.
TOOLS_TEMPLATE = (
    "{% if tools %}{{ 'TOOLS ' + tools | tojson + '\n' }}{% endif %}"
    "{% for message in messages %}{{ '[' + message['role'] + '] ' + message['content'] }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{{ 'CALL ' + call['id'] + ' ' + call['function']['name'] + ' ' + call['function']['arguments'] | tojson }}"
    "{% endfor %}"
    "{% if message['tool_call_id'] %}{{ ' FOR ' + message['tool_call_id'] }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}"
)


def test_a_template_that_reads_tools_knows_them() -> None:
    assert ChatTemplate(TOOLS_TEMPLATE, {}).knows_tools
    assert not ChatTemplate(CHATML, {}).knows_tools


def test_tools_reach_a_template_that_knows_them_as_transformers_passes_them() -> None:
    mine = ChatTemplate(TOOLS_TEMPLATE, {}).render(TOOL_TURNS, tools=[WEATHER])
    assert mine == (
        'TOOLS [{"type": "function", "function": {"name": "get_weather", "description": "The weather now.", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]\n'
        "[user] Weather in Paris?\n"
        '[assistant] CALL call_1 get_weather {"city": "Paris"}\n'
        "[tool] 18 degrees FOR call_1\n"
        "[assistant] "
    )
    tokenizer = build_tokenizer()
    theirs = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "id": "call_1",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ],
            },
            {"role": "tool", "content": "18 degrees", "tool_call_id": "call_1"},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": WEATHER.name,
                    "description": WEATHER.description,
                    "parameters": WEATHER.parameters,
                },
            }
        ],
        chat_template=TOOLS_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert mine == theirs


def test_without_tools_a_template_that_knows_them_renders_as_before() -> None:
    template = ChatTemplate(TOOLS_TEMPLATE, {})
    assert template.render([ChatMessage("user", "Hi")]) == "[user] Hi\n[assistant] "


def test_a_template_without_tools_gets_them_in_the_messages() -> None:
    rendered = ChatTemplate(CHATML, {}).render([ChatMessage("system", "Be brief."), *TOOL_TURNS], tools=[WEATHER])
    tools_json = json.dumps(
        {
            "type": "function",
            "function": {
                "name": WEATHER.name,
                "description": WEATHER.description,
                "parameters": dict(WEATHER.parameters),
            },
        }
    )
    assert rendered == (
        "<|im_start|>system\nBe brief.\n\n" + TOOLS_PROMPT.format(tools=tools_json) + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALL_TEXT}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n18 degrees\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "<tool_call>" in TOOLS_PROMPT and "</tool_call>" in TOOLS_PROMPT


def test_the_tools_block_becomes_the_first_system_message_if_there_is_none() -> None:
    rendered = ChatTemplate(CHATML, {}).render([ChatMessage("user", "Hi")], tools=[FunctionTool("now")])
    assert rendered.startswith("<|im_start|>system\n# Tools\n")
    assert (
        '{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}'
        in rendered
    )
    assert "You are a tiny test model." not in rendered


def test_content_before_calls_stays_before_them() -> None:
    messages = [ChatMessage("user", "Hi"), ChatMessage("assistant", "Looking.", tool_calls=(CALL, CALL))]
    rendered = ChatTemplate(CHATML, {}).render(messages)
    assert f"<|im_start|>assistant\nLooking.\n{CALL_TEXT}\n{CALL_TEXT}<|im_end|>\n" in rendered


@pytest.mark.parametrize("source", [CHATML, TOOLS_TEMPLATE], ids=["generic", "template"])
def test_call_arguments_must_be_a_json_object(source: str) -> None:
    bad = ChatMessage("assistant", "", tool_calls=(ToolCall("call_2", "get_weather", "Paris"),))
    with pytest.raises(ChatTemplateFailed, match="'call_2' are not a JSON object"):
        ChatTemplate(source, {}).render([ChatMessage("user", "Hi"), bad])
