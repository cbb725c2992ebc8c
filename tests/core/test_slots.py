"""The KV slots' named states: a placed sequence runs in its slot, an ended one leaves a cache entry (or nothing
after an engine error), and a later prompt starts from the entry that shares its beginning."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distilgpt2_api.core.slots import SlotPool, SlotState
from distilgpt2_api.engines.base import Chunk, StepEngine


class KvStandIn(StepEngine):
    """Only what the pool asks of an engine: slots to empty and copy."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.calls: list[tuple[str, int, ...]] = []

    def forward(self, chunks: Sequence[Chunk]) -> np.ndarray:
        raise AssertionError("the pool never computes")

    def truncate(self, slot: int, length: int) -> None:
        self.calls.append(("truncate", slot, length))

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        self.calls.append(("copy", source, target, length))

    def close(self) -> None:
        pass


def test_a_slot_is_idle_then_running_then_a_cache_entry() -> None:
    pool = SlotPool(KvStandIn(3))
    assert [pool.state(slot) for slot in range(3)] == [SlotState.IDLE] * 3
    placed = pool.place([1, 2, 3, 4], count=2)
    assert placed.reused == 0 and [pool.state(slot) for slot in placed.slots] == [SlotState.RUNNING] * 2
    first, second = placed.slots
    pool.fed(first, [1, 2, 3, 4, 9])
    pool.release(first, keep=True)
    assert pool.state(first) is SlotState.CACHED and pool.cached == 1
    pool.release(second, keep=True)  # it held nothing: no entry to keep
    assert pool.state(second) is SlotState.IDLE

    again = pool.place([1, 2, 3, 7], count=1)  # shares 3 tokens with the entry, which it takes over
    assert again.slots == (first,) and again.reused == 3
    assert pool.state(first) is SlotState.RUNNING and pool.tokens(first) == [1, 2, 3]


def test_a_slot_an_engine_error_left_unknown_is_emptied() -> None:
    engine = KvStandIn(2)
    pool = SlotPool(engine)
    (slot,) = pool.place([5, 6], count=1).slots
    pool.fed(slot, [5, 6])
    pool.release(slot, keep=False)
    assert pool.state(slot) is SlotState.IDLE and pool.tokens(slot) == []
    assert engine.calls[-1] == ("truncate", slot, 0)


def running_pool(slots: int, prompts: dict[int, list[int]]) -> tuple[KvStandIn, SlotPool]:
    """A pool whose sequences run in the given slots (placed in order, the others released as entries)."""
    engine = KvStandIn(slots)
    pool = SlotPool(engine)
    placed = [pool.place([100 + slot], count=1).slots[0] for slot in range(slots)]
    assert placed == list(range(slots))
    for slot in range(slots):
        if slot in prompts:
            pool.fed(slot, prompts[slot])
        else:
            pool.fed(slot, [100 + slot, 1])
            pool.release(slot, keep=True)
    return engine, pool


def test_gather_moves_scattered_sequences_into_consecutive_slots() -> None:
    prompts = {0: [1, 2], 3: [3, 4, 5], 5: [6], 7: [7, 8]}
    engine, pool = running_pool(8, prompts)
    moved = pool.gather(list(prompts))
    after = {moved.get(slot, slot): tokens for slot, tokens in prompts.items()}
    assert sorted(after) == list(range(min(after), min(after) + 4))  # one run of slots
    assert len(moved) == 2  # a window that already held two of them: two moves, not three
    for source, target in moved.items():
        assert ("copy", source, target, len(prompts[source])) in engine.calls
        assert pool.state(target) is SlotState.RUNNING and pool.tokens(target) == prompts[source]
        assert pool.state(source) is SlotState.CACHED  # what it held stays a cache entry
    assert all(pool.state(slot) is SlotState.RUNNING for slot in after)


def test_gather_leaves_consecutive_sequences_and_other_running_slots_alone() -> None:
    engine, pool = running_pool(6, {1: [1], 2: [2], 3: [3], 5: [9]})
    calls = len(engine.calls)
    assert pool.gather([1, 2, 3]) == {} and len(engine.calls) == calls
    moved = pool.gather([1, 3])  # slot 2 runs something else: 3 moves next to 1 is impossible, 1 next to 3 not
    assert set(moved.values()).isdisjoint({2, 5}) and sorted(moved.get(s, s) for s in (1, 3)) in ([0, 1], [3, 4])
