"""Chat templates render as Hugging Face renders them, without transformers at serving time."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from distilgpt2_api.core.chat import ChatMessage, ChatTemplate
from distilgpt2_api.core.errors import ChatTemplateFailed, ChatUnsupported
from distilgpt2_api.core.scheduler import Scheduler
from distilgpt2_api.engines import ModelInfo, load_engine

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
    scheduler = Scheduler(load_engine(model_dir, "ctranslate2", threads=1))
    with pytest.raises(ChatUnsupported, match="has no chat template"):
        _ = scheduler.chat_template
