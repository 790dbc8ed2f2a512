"""The write path's pure parts: every malformed event is refused alone, naming its field."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter

import pytest

from relive.recorder import bucket as bk
from relive.recorder.v1 import event_pb2
from relive.recorder.writer import (
    MAX_PRODUCER_LEN,
    MAX_TYPE_LEN,
    AppendResult,
    first_of_each,
    group_valid,
    validate,
)
from tests.unit.recorder_timeline import PARENT, T0, event

MAX_BYTES = 4096


def _set(**fields: object) -> Callable[[event_pb2.Event], None]:
    def change(e: event_pb2.Event) -> None:
        for name, value in fields.items():
            setattr(e, name, value)

    return change


def _hlc(ms: int, logical: int = 0) -> Callable[[event_pb2.Event], None]:
    def change(e: event_pb2.Event) -> None:
        e.hlc.physical_ms = ms
        e.hlc.logical = logical

    return change


def _big(e: event_pb2.Event) -> None:
    e.lifecycle.state = "x" * MAX_BYTES


def _anonymous(**fields: object) -> Callable[[event_pb2.Event], None]:
    return _set(producer_id="", producer_sequence=0, **fields)


CASES = {
    "other ion": (_set(ion="ions/other"), ".ion"),
    "no type": (_set(type=""), ".type"),
    "long type": (_set(type="t" * (MAX_TYPE_LEN + 1)), ".type"),
    "no hlc": (_hlc(0), ".hlc"),
    "hlc past the key range": (_hlc(bk.MAX_MS + 1), ".hlc"),
    "negative logical": (_hlc(T0, -1), ".hlc"),
    "producer without sequence": (_set(producer_sequence=0), ".producer_sequence"),
    "long producer": (_set(producer_id="p" * (MAX_PRODUCER_LEN + 1)), ".producer_id"),
    "no identity": (_anonymous(), ".event_id"),
    "long event id": (_anonymous(event_id="e" * (MAX_PRODUCER_LEN + 1)), ".event_id"),
    "upper-case trace": (_set(trace_id="AB" * 16), ".trace_id"),
    "short trace": (_set(trace_id="ab" * 8), ".trace_id"),
    "bad span": (_set(span_id="xyz"), ".span_id"),
    "too big": (_big, ""),
}


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_event_is_refused_naming_its_field(case: str) -> None:
    change, field = CASES[case]
    e = event(T0, producer="p", pseq=1)
    assert validate(e, PARENT, MAX_BYTES, check_size=True) is None
    change(e)
    problem = validate(e, PARENT, MAX_BYTES, check_size=True)
    assert problem is not None
    assert problem[0] == field
    assert problem[1]  # a reason a person can read


def test_well_formed_events_pass() -> None:
    good = [
        event(T0, producer="p", pseq=1, trace_id="ab" * 16),
        event(T0, producer="", event_id="e1"),
        event(T0, producer="p", pseq=2),
    ]
    good[0].span_id = "cd" * 8
    good[2].ion = PARENT
    assert [validate(e, PARENT, MAX_BYTES, check_size=True) for e in good] == [None] * 3


def test_the_size_check_is_skipped_when_the_whole_batch_is_small() -> None:
    e = event(T0, producer="p", pseq=1)
    _big(e)
    assert validate(e, PARENT, MAX_BYTES, check_size=False) is None


def test_a_batch_keeps_its_valid_events_grouped_by_producer() -> None:
    events = [
        event(T0 + 2, producer="a", pseq=1),
        event(T0 + 1, producer="b", pseq=1),
        event(T0, producer="a", pseq=2, type=""),
        event(T0 + 3, producer="", event_id="e1"),
        event(T0 + 4, producer="a", pseq=3, trace_id="nope"),
        event(T0 + 5, producer="a", pseq=4),
    ]
    result = AppendResult(sequences=[0] * len(events))
    groups = group_valid(events, PARENT, MAX_BYTES, True, result)
    assert [(r.index, r.field, r.code) for r in result.rejections] == [
        (2, "events[2].type", "INVALID_ARGUMENT"),
        (4, "events[4].trace_id", "INVALID_ARGUMENT"),
    ]
    assert groups == {
        "a": [(T0 + 2, 0, 1, 0), (T0 + 5, 0, 4, 5)],
        "b": [(T0 + 1, 0, 1, 1)],
        "": [(T0 + 3, 0, 0, 3)],
    }


def test_a_repeat_inside_one_batch_points_at_its_first() -> None:
    items = [(T0, 0, 1, 0), (T0, 0, 2, 1), (T0, 0, 1, 2), (T0, 0, 2, 3), (T0, 0, 1, 4)]
    first_of, firsts, repeats = first_of_each(items, itemgetter(2))
    assert first_of == {1: 0, 2: 1}
    assert firsts == items[:2]
    assert repeats == [(2, 0), (3, 1), (4, 0)]
