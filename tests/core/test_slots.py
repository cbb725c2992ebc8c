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
