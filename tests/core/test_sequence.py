"""A sequence releases only final text: never part of a stop string, never half a character."""

from __future__ import annotations

import pytest

from distilgpt2_api.core.sequence import Delta, Sequence
from distilgpt2_api.core.stop import cut_at_stop, stop_prefix_start
from distilgpt2_api.engines.base import TextTokenizer, TokenStep

EOS = 0


def _feed(
    tokenizer: TextTokenizer, text: str, *, stop: tuple[str, ...] = (), eos: bool = False, max_new_tokens: int = 100
) -> tuple[Sequence, list[Delta], list[int]]:
    """Feed `text`'s tokens one by one (then an EOS if asked); the deltas, and the token ids fed."""
    ids = tokenizer.encode(text, add_special_tokens=False) + ([EOS] if eos else [])
    sequence = Sequence(tokenizer, max_new_tokens=max_new_tokens, stop=stop, eos_token_ids=frozenset({EOS}))
    deltas = []
    for token_id in ids:
        sequence.add(TokenStep(0, token_id))
        if (delta := sequence.take(0)) is not None:
            deltas.append(delta)
        if sequence.finished:
            break
    return sequence, deltas, ids


def test_released_text_is_the_decoded_text(tokenizer: TextTokenizer) -> None:
    text = "hello world again"
    sequence, deltas, ids = _feed(tokenizer, text)
    assert len(ids) > 3 and len(deltas) > 3  # token by token
    assert "".join(d.text for d in deltas) == text == tokenizer.decode(ids)
    assert sequence.finish_reason is None and sequence.completion_tokens == len(ids)


def test_a_character_split_across_tokens_is_never_split_across_deltas(tokenizer: TextTokenizer) -> None:
    text = "naïve café 🙂!"
    assert len(tokenizer.encode("🙂", add_special_tokens=False)) > 1  # the test needs a split character
    _, deltas, _ = _feed(tokenizer, text)
    assert all("\ufffd" not in d.text for d in deltas)
    assert "".join(d.text for d in deltas) == text
    assert any("🙂" in d.text for d in deltas)


def test_text_that_could_start_a_stop_string_waits(tokenizer: TextTokenizer) -> None:
    # "lo wor" begins inside "hello": nothing from there on may leave until the stop string is complete.
    sequence, deltas, _ = _feed(tokenizer, "hello world again", stop=("lo wor",))
    released = "".join(d.text for d in deltas)
    assert released == "hel"
    assert all("lo" not in d.text for d in deltas)
    assert (sequence.finish_reason, deltas[-1].finish_reason) == ("stop", "stop")


def test_the_stop_string_that_ended_it_is_reported(tokenizer: TextTokenizer) -> None:
    sequence, deltas, _ = _feed(tokenizer, "hello world again", stop=("again", "o w"))
    assert "".join(d.text for d in deltas) == "hell"
    assert (sequence.stop_sequence, deltas[-1].stop_sequence) == ("o w", "o w")
    assert all(d.stop_sequence is None for d in deltas[:-1])
    unstopped, deltas, _ = _feed(tokenizer, "hello", stop=("x",), eos=True)
    assert unstopped.finish_reason == "eos" and deltas[-1].stop_sequence is None
    # Several in the text at once: the one that begins first ends it, whatever their order in the list.
    assert cut_at_stop("abcdef", ("ef", "cd")) == ("ab", "cd") and cut_at_stop("abc", ("x",)) is None


def test_held_text_is_released_once_it_cannot_become_a_stop_string(tokenizer: TextTokenizer) -> None:
    text = "hello wonder again"
    sequence, deltas, _ = _feed(tokenizer, text, stop=("lo world",))
    assert "".join(d.text for d in deltas) == text
    assert sequence.finish_reason is None


def test_eos_ends_and_releases_what_was_held(tokenizer: TextTokenizer) -> None:
    sequence, deltas, ids = _feed(tokenizer, "hello wor", stop=("world",), eos=True)
    assert "".join(d.text for d in deltas) == "hello wor"
    last = deltas[-1]
    assert (last.finish_reason, last.completion_tokens) == ("eos", len(ids))  # the EOS counts: it was computed
    assert last.end_token is not None and last.end_token.id == EOS
    assert all(token.id != EOS for d in deltas for token in d.tokens)  # never shown as a token of the text


def test_max_new_tokens_ends_with_length(tokenizer: TextTokenizer) -> None:
    sequence, deltas, _ = _feed(tokenizer, "hello world again", max_new_tokens=2)
    assert sequence.finish_reason == "length" and sequence.completion_tokens == 2
    assert "".join(d.text for d in deltas) == tokenizer.decode(tokenizer.encode("hello world again")[:2])


@pytest.mark.parametrize(
    ("text", "stop", "start"),
    [("hello", ("lo!",), 3), ("hello", ("xyz",), 5), ("hello", ("hello there",), 0), ("ab", ("b", "abc"), 0)],
)
def test_stop_prefix_start(text: str, stop: tuple[str, ...], start: int) -> None:
    assert stop_prefix_start(text, stop) == start
