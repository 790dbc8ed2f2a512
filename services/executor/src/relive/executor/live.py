"""The runs in progress in this executor, and the background writer that saves their state."""

from __future__ import annotations

import logging
import threading

from relive.executor.runner import RunExecution
from relive.executor.store import RunStore
from relive.executor.v1 import executor_pb2 as pb

log = logging.getLogger(__name__)


class LiveRuns:
    """Watchers hear of every change at once; the store gets the newest state from a
    background writer, except the terminal state, which is written before anyone is told
    the run ended."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._active: dict[str, RunExecution] = {}
        self._dirty: dict[str, pb.Run] = {}
        self.changed = threading.Condition()  # notified on every change of any run
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="run-writer", daemon=True)
        self._writer.start()

    def add(self, name: str, execution: RunExecution) -> None:
        with self._lock:
            self._active[name] = execution

    def get(self, name: str) -> RunExecution | None:
        with self._lock:
            return self._active.get(name)

    def all(self) -> list[RunExecution]:
        with self._lock:
            return list(self._active.values())

    def fresh(self, run: pb.Run) -> pb.Run:
        """The live state of ``run`` when it is in progress here, else ``run`` itself."""
        ex = self.get(run.name)
        return ex.snapshot() if ex is not None else run

    def on_change(self, run: pb.Run) -> None:
        if run.is_terminal:
            with self._lock:
                self._dirty.pop(run.name, None)
            self.store.save(run)
            with self._lock:
                self._active.pop(run.name, None)
        else:
            with self._lock:
                self._dirty[run.name] = run
            self._wake.set()
        with self.changed:
            self.changed.notify_all()

    def close(self) -> None:
        """Stops the writer (the runs must have ended or been cancelled first)."""
        self._closing.set()
        self._wake.set()
        self._writer.join(5)

    def _write_loop(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            self._write_dirty()
            self._closing.wait(0.1)

    def _write_dirty(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        for name in dirty:
            ex = self.get(name)
            if ex is None:
                continue  # ended meanwhile: its terminal state was written already
            snapshot = ex.snapshot()
            if not snapshot.is_terminal:
                try:
                    self.store.save(snapshot)
                except Exception:
                    log.warning("could not save run %s", name, exc_info=True)
