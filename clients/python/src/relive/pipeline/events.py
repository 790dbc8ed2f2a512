"""What the pipeline code records through: the event builder and a small sink protocol.

Components and the executor build events with :class:`EventFactory` (``relive.events``) and
emit them to an :class:`EventSink`: in a run, the SDK's streaming
``relive.client.sink.EventSink``; in a component that hands its events back to the
executor, or in a test, a :class:`ListSink`. Both give each event a producer identity the
same way (``relive.events.Producer``), so the recorder deduplicates them on its fast path.
"""

from __future__ import annotations

import threading
from typing import Protocol

from relive import hlc
from relive.events import (
    Clock,
    Event,
    EventFactory,
    Producer,
    default_producer_id,
    struct_to_dict,
    to_struct,
)


class EventSink(Protocol):
    """Where events go. ``flush`` returns once every emitted event is stored (or raises)."""

    def emit(self, event: Event) -> object: ...

    def flush(self) -> None: ...


class ListSink:
    """Keeps events in memory, each with this sink's producer identity: a component hands
    them back to the executor (which forwards them unchanged), or a test reads them."""

    def __init__(
        self, producer_id: str | None = None, clock: hlc.HybridLogicalClock | None = None
    ) -> None:
        self.events: list[Event] = []
        self.producer = Producer(producer_id or default_producer_id(), clock)
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(self.producer.stamp(event))

    def flush(self) -> None:
        return None


__all__ = [
    "Clock",
    "Event",
    "EventFactory",
    "EventSink",
    "ListSink",
    "struct_to_dict",
    "to_struct",
]
