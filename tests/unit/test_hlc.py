"""The hybrid logical clock: causal order holds whatever the physical clocks do."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relive.hlc import HybridLogicalClock, Stamp


class FakeWall:
    """A physical clock the test moves by hand (it may stall or go backwards)."""

    def __init__(self, ms: int = 1_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_stamps_increase_while_the_wall_clock_stalls_or_goes_back() -> None:
    wall = FakeWall(5_000)
    clock = HybridLogicalClock(wall)
    first = clock.now()
    wall.ms = 4_000  # NTP stepped the clock back
    second = clock.now()
    third = clock.now()
    assert first < second < third
    assert second == Stamp(5_000, 1)
    wall.ms = 6_000
    assert clock.now() == Stamp(6_000, 0)


def test_a_receive_is_after_the_remote_send_even_from_a_clock_ahead() -> None:
    local = HybridLogicalClock(FakeWall(1_000))
    remote = HybridLogicalClock(FakeWall(9_000))  # a machine 8 s ahead
    sent = remote.now()
    received = local.update(sent)
    assert received > sent
    assert local.now() > received


def test_the_logical_counter_borrows_a_millisecond_instead_of_overflowing() -> None:
    clock = HybridLogicalClock(FakeWall(1_000))
    assert clock.update(Stamp(1_000, 2**31 - 1)) == Stamp(1_001, 0)
    assert clock.now() == Stamp(1_001, 1)


@pytest.mark.parametrize("text", ["", "abc", "12.x", "1.2.3"])
def test_a_malformed_encoded_stamp_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        Stamp.decode(text)


def test_encode_and_decode_round_trip() -> None:
    assert Stamp.decode(Stamp(1_733_000_000_123, 7).encode()) == Stamp(1_733_000_000_123, 7)


# A message between two processes: (sender, wall time of the sender, wall time of receiver).
steps = st.lists(
    st.tuples(st.booleans(), st.integers(0, 10_000), st.integers(0, 10_000)),
    min_size=1,
    max_size=60,
)


@given(steps)
def test_causal_order_holds_between_two_processes_with_skewed_clocks(
    messages: list[tuple[bool, int, int]],
) -> None:
    """Every send and receive chain is strictly increasing in HLC order."""
    walls = [FakeWall(), FakeWall()]
    clocks = [HybridLogicalClock(walls[0]), HybridLogicalClock(walls[1])]
    last = [Stamp(0, 0), Stamp(0, 0)]
    for from_a, send_wall, receive_wall in messages:
        s, r = (0, 1) if from_a else (1, 0)
        walls[s].ms, walls[r].ms = send_wall, receive_wall
        sent = clocks[s].now()
        assert sent > last[s]
        received = clocks[r].update(sent)
        assert received > sent
        assert received > last[r]
        last[s], last[r] = sent, received
