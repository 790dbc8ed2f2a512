"""The wire side of ``EventSink``: one ``StreamEvents`` call, a window of batches in flight,
and reconnects that resend every unacknowledged batch unchanged.

gRPC's service-config retries cannot do this for a bidirectional stream: they stop retrying
once the server has sent anything, and a resend must carry the batches the broken stream
had in flight, in order, with their ids. The recorder deduplicates what it already stored
(docs/recorder-storage.md, "Deduplication"), so resending is always safe.
"""

from __future__ import annotations

import collections
import logging
import queue
import random
import time
from typing import Any, Protocol

import grpc

from relive.errors import ReliveError, from_rpc_error
from relive.recorder.v1 import recorder_pb2, recorder_pb2_grpc

log = logging.getLogger(__name__)

Batch = recorder_pb2.StreamEventsRequest

# Transient stream failures: reconnect and resend.
RETRY_STREAM = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
# Codes that may come from the batch itself rather than the connection: retried a few times,
# then the first batch in flight is given up as refused.
SUSPECT = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
MAX_SUSPECT_RETRIES = 5
_END = object()


class BatchSource(Protocol):
    """What the stream asks of the buffer it drains (``EventSink`` implements it)."""

    def take(self, wait: bool) -> Batch | None:
        """The next batch to send, or None (after waiting a little, when ``wait``)."""

    def idle(self) -> bool:
        """True once nothing more will come: the sink is closing and its buffer is empty."""

    def closed(self) -> bool: ...

    def unsent(self) -> int:
        """Events queued but not yet taken."""

    def acked(self, batch: Batch, result: recorder_pb2.AppendEventsResponse) -> None: ...

    def failed(self, batch: Batch, error: ReliveError) -> None: ...

    def reconnected(self) -> None: ...


class BatchStream:
    """Drains a :class:`BatchSource` into ``StreamEvents``, ``window`` batches at a time."""

    def __init__(
        self,
        stub: recorder_pb2_grpc.RecorderServiceStub,
        source: BatchSource,
        *,
        name: str,
        window: int = 2,
        max_backoff_s: float = 2.0,
    ) -> None:
        self._stub = stub
        self._source = source
        self._name = name
        self._window = max(1, window)
        self._max_backoff_s = max_backoff_s
        self._inflight: collections.deque[Batch] = collections.deque()
        self._next_id = 1
        self._backoff = 0.05
        self._suspect = 0

    def run(self) -> None:
        """Sends until the source is idle or closed; one connection per loop."""
        while True:
            if self._source.closed() and (self._inflight or self._source.unsent()):
                log.error("recorder sink %s closed with events unsent", self._name)
                return
            requests: queue.Queue[Any] = queue.Queue()
            try:
                responses = self._stub.StreamEvents(iter(requests.get, _END), wait_for_ready=True)
            except ValueError:  # the channel was closed under us
                return
            for batch in self._inflight:  # resend, unchanged, after a reconnect
                requests.put(batch)
            try:
                if self._pump(requests, responses):
                    return
            except grpc.RpcError as e:
                requests.put(_END)
                if self._broken(e):
                    return
            except StopIteration:
                requests.put(_END)
                self._sleep(jitter=False)
            except Exception:  # pragma: no cover - keep the thread alive, loudly
                log.exception("recorder sink %s: sender failed", self._name)
                requests.put(_END)
                self._sleep(jitter=False)

    def _pump(self, requests: queue.Queue[Any], responses: Any) -> bool:
        """Sends and reads acks on one connection; True when the source is done."""
        while True:
            while len(self._inflight) < self._window:
                batch = self._source.take(wait=not self._inflight)
                if batch is None:
                    break
                batch.batch_id = self._next_id
                self._next_id += 1
                self._inflight.append(batch)
                requests.put(batch)
            if not self._inflight:
                if self._source.idle():
                    requests.put(_END)
                    for _ in responses:  # let the server end the stream cleanly
                        pass
                    return True
                continue
            ack = next(responses)
            batch = self._inflight.popleft()
            if ack.batch_id != batch.batch_id:
                log.error("recorder acked batch %d, expected %d", ack.batch_id, batch.batch_id)
            self._source.acked(batch, ack.result)
            self._backoff = 0.05
            self._suspect = 0

    def _broken(self, e: grpc.RpcError) -> bool:
        """Handles a broken stream; True when the sender should stop."""
        code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
        if code in SUSPECT:
            # A server error may be this batch's fault: give up on it after a few tries.
            self._suspect += 1
            if self._suspect > MAX_SUSPECT_RETRIES and self._inflight:
                self._source.failed(self._inflight.popleft(), from_rpc_error(e))
                self._suspect = 0
                return False
        if code in RETRY_STREAM and not self._source.closed():
            self._source.reconnected()
            log.info("recorder stream broke (%s); resending %d batches", code, len(self._inflight))
            self._sleep(jitter=True)
            return False
        if self._source.closed():
            return True
        # The first unacknowledged batch is the one the recorder refused.
        if self._inflight:
            self._source.failed(self._inflight.popleft(), from_rpc_error(e))
        return False

    def _sleep(self, *, jitter: bool) -> None:
        time.sleep(self._backoff * (0.5 + random.random()) if jitter else self._backoff)
        self._backoff = min(self._backoff * 2, self._max_backoff_s)
