"""Stop strings: where a text must end."""

from __future__ import annotations


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """The text before the earliest stop string, or None if none occurs."""
    positions = [index for index in (text.find(s) for s in stop) if index >= 0]
    return text[: min(positions)] if positions else None


def tail_tokens_for(stop: tuple[str, ...]) -> int:
    """How many trailing tokens to decode to see any stop string that a new token may have completed."""
    return max(map(len, stop)) + 8  # a token is at least one character; a few more for merges across tokens
