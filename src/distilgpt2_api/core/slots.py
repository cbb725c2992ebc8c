"""The engine's KV slots: which sequence holds which, and the prefix cache in the slots nobody runs in.

Each slot's KV holds exactly the tokens recorded here (what was fed into it, in order). When a sequence ends,
its slot's KV stays as a cache entry (its prompt and the tokens it generated); a new prompt starts from the
entry or running slot sharing its longest prefix, so only the rest is computed. Entries live in slots no
sequence uses, at most `cache_entries` of them; the least recently used one goes first when a sequence needs
a slot. The engine allocates every slot's KV up front (`StepEngine.slots`): the cache costs no memory of its
own, only the slots it may occupy.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from distilgpt2_api.engines.base import StepEngine


class SlotState(Enum):
    IDLE = "idle"  # its KV holds nothing
    CACHED = "cached"  # no sequence owns it; its KV is a cache entry (a prompt and what followed it)
    RUNNING = "running"  # a sequence owns it


@dataclass
class _Slot:
    tokens: list[int] = field(default_factory=list)  # what its KV holds
    running: bool = False  # a sequence owns it
    used: int = 0  # when it was last a cache entry or a source of one (for LRU)

    @property
    def state(self) -> SlotState:
        if self.running:
            return SlotState.RUNNING
        return SlotState.CACHED if self.tokens else SlotState.IDLE


@dataclass(frozen=True)
class Placement:
    """Where a new request's sequences go: `slots[0]` already holds the prompt's first `reused` tokens."""

    slots: tuple[int, ...]
    reused: int


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens `a` and `b` share, at most `limit`."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class SlotPool:
    """Owns the engine's slots: the scheduler asks here for slots, records what it feeds, and gives them back."""

    def __init__(self, engine: StepEngine, *, cache_entries: int | None = None) -> None:
        self._engine = engine
        self._slots = [_Slot() for _ in range(engine.slots)]
        self.cache_entries = engine.slots if cache_entries is None else cache_entries  # 0: no prefix cache
        self._clock = itertools.count(1)

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def cached(self) -> int:
        """Slots holding a cache entry."""
        return sum(1 for s in self._slots if s.state is SlotState.CACHED)

    def state(self, slot: int) -> SlotState:
        return self._slots[slot].state

    def tokens(self, slot: int) -> list[int]:
        """What `slot`'s KV holds (do not modify)."""
        return self._slots[slot].tokens

    def place(self, prompt: Sequence[int], count: int) -> Placement:
        """`count` slots for a new request's sequences; the first starts from the longest prefix of `prompt`
        that a slot holds (keeping at least one prompt token to compute, whose logits come next)."""
        taken = [i for i, s in enumerate(self._slots) if s.running]
        try:
            return self._place(prompt, count)
        except BaseException:  # the engine failed: give back what was taken here, empty (its KV is unknown)
            for slot, state in enumerate(self._slots):
                if state.running and slot not in taken:
                    state.running = False
                    with contextlib.suppress(Exception):
                        self._empty(slot, always=True)
            raise

    def _place(self, prompt: Sequence[int], count: int) -> Placement:
        source, reused = self._best_source(prompt)
        if source is None or reused == 0:
            first = self._obtain()
            reused = 0
        elif not self._slots[source].running and (
            2 * reused >= len(self._slots[source].tokens) or self._obtainable(exclude=source) < count
        ):
            first = source  # take the entry over: it loses at most half of itself
            self._truncate(first, reused)
            self._slots[first].running = True
        else:  # keep the source (a running sequence, or an entry worth more than this prefix): copy from it
            first = self._obtain(exclude=source)
            self.copy(source, first, reused)
            self._slots[source].used = next(self._clock)
        others = tuple(self._obtain() for _ in range(count - 1))
        return Placement((first, *others), reused)

    def gather(self, slots: Sequence[int]) -> dict[int, int]:
        """Move the sequences in `slots` (running) into consecutive slots, where a window of that size already
        holds the most of them; returns where each moved one went. llama.cpp computes consecutive slots in one pass
        over the weights and splits a step at every gap: 8 sequences in scattered slots took up to twice as long a
        step on SmolLM2. A move copies the slot's KV and leaves the old slot as a cache entry of what it held."""
        wanted = set(slots)
        best: tuple[int, int, int] | None = None  # (held, -entries lost, start)
        for start in range(len(self._slots) - len(wanted) + 1):
            window = range(start, start + len(wanted))
            held = sum(1 for i in window if i in wanted)
            free = [i for i in window if not self._slots[i].running]
            if held + len(free) == len(wanted):  # the others fit in the window's free slots
                lost = sum(1 for i in free if self._slots[i].state is SlotState.CACHED)
                best = max(best or (held, -lost, start), (held, -lost, start))
        if best is None or best[0] == len(wanted):
            return {}
        window = range(best[2], best[2] + len(wanted))
        targets = sorted((i for i in window if not self._slots[i].running), key=lambda i: self._slots[i].used)
        moves = dict(zip(sorted(wanted.difference(window)), targets, strict=True))
        for source, target in moves.items():
            self._empty(target)
            self.copy(source, target, len(self._slots[source].tokens))
            self._slots[target].running, self._slots[source].running = True, False
            self._slots[source].used = next(self._clock)
        while self.cached > self.cache_entries:
            self._empty(self._least_recent())
        return moves

    def fed(self, slot: int, token_ids: Sequence[int]) -> None:
        """The engine took `token_ids` into `slot` after what it held."""
        self._slots[slot].tokens.extend(token_ids)

    def copy(self, source: int, target: int, length: int) -> None:
        """Make `target` hold `source`'s first `length` tokens."""
        self._engine.copy_prefix(source, target, length)
        self._slots[target].tokens = self._slots[source].tokens[:length]

    def release(self, slot: int, *, keep: bool) -> None:
        """A sequence ended: its slot becomes a cache entry (`keep`, when the cache is on) or is emptied. Not
        `keep` after an engine error, when nobody knows what the KV holds."""
        state = self._slots[slot]
        state.running = False
        if not keep or self.cache_entries == 0 or not state.tokens:
            self._empty(slot, always=not keep)
            return
        state.used = next(self._clock)
        for other, entry in enumerate(self._slots):  # an entry this one extends is of no more use
            if other != slot and entry.state is SlotState.CACHED and _starts(state.tokens, entry.tokens):
                self._empty(other)
        while self.cached > self.cache_entries:
            self._empty(self._least_recent())

    def _best_source(self, prompt: Sequence[int]) -> tuple[int | None, int]:
        best, best_key = None, (0, False, 0)
        for index, state in enumerate(self._slots):
            length = common_prefix(state.tokens, prompt, len(prompt) - 1)
            key = (length, not state.running, state.used)  # longest; an entry over a running slot; the newest
            if length > 0 and key > best_key:
                best, best_key = index, key
        return best, best_key[0]

    def _obtainable(self, *, exclude: int | None = None) -> int:
        return sum(1 for i, s in enumerate(self._slots) if s.state is not SlotState.RUNNING and i != exclude)

    def _obtain(self, *, exclude: int | None = None) -> int:
        """An empty slot, else the least recently used entry's, emptied, now running."""
        empty = next((i for i, s in enumerate(self._slots) if s.state is SlotState.IDLE and i != exclude), None)
        slot = empty if empty is not None else self._least_recent(exclude=exclude)
        self._empty(slot)
        self._slots[slot].running = True
        return slot

    def _least_recent(self, *, exclude: int | None = None) -> int:
        entries = [(s.used, i) for i, s in enumerate(self._slots) if s.state is SlotState.CACHED and i != exclude]
        if not entries:
            raise RuntimeError("no KV slot left: the scheduler admitted more sequences than the engine has slots")
        return min(entries)[1]

    def _truncate(self, slot: int, length: int) -> None:
        state = self._slots[slot]
        if len(state.tokens) > length:
            state.tokens = state.tokens[:length]  # forgotten first: if the engine fails, we hold no more than it
            self._engine.truncate(slot, length)

    def _empty(self, slot: int, *, always: bool = False) -> None:
        """Empty `slot`; `always`: even if it should be empty already (the engine failed while filling it)."""
        state = self._slots[slot]
        state.used = 0
        if state.tokens or always:
            state.tokens = []
            self._engine.truncate(slot, 0)


def _starts(tokens: Sequence[int], prefix: Sequence[int]) -> bool:
    return len(prefix) <= len(tokens) and common_prefix(tokens, prefix, len(prefix)) == len(prefix)
