"""Stop strings: where a text must end, and how much of it could still become one."""

from __future__ import annotations


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, str] | None:
    """The text before the earliest stop string, and that stop string; None if none occurs."""
    found = [(index, s) for index, s in ((text.find(s), s) for s in stop) if index >= 0]
    if not found:
        return None
    index, matched = min(found, key=lambda item: item[0])
    return text[:index], matched


def stop_prefix_start(text: str, stop: tuple[str, ...]) -> int:
    """Where the longest end of `text` that begins some stop string starts; len(text) if none does.

    Text before that index can be shown: no stop string can begin there any more.
    """
    longest = 0
    for s in stop:
        for length in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:length]):
                longest = length
                break
    return len(text) - longest
