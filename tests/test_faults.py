"""Faults: the store is SIGKILLed during ingestion, the executor is SIGKILLed during a run.

In both cases nothing that was acknowledged is lost: the producers' sinks keep retrying
until the store is back, and a restarted executor marks the runs it lost FAILED, with the
reason in the run and in the timeline, instead of leaving them RUNNING forever.
"""
# ruff: noqa: F811 - fixtures are imported from tests/executor_fixtures.py

from __future__ import annotations

import signal
import textwrap
import threading
import time
from pathlib import Path

import grpc
import pytest
from test_recorder_support import ServiceProcess, create_ion, service_env

from relive.client.executor import ExecutorClient
from relive.client.recorder import RecorderClient
from relive.client.registry import RegistryClient
from relive.client.sink import EventSink
from relive.core import embedded
from relive.core.config import Config
from relive.core.embedded import EmbeddedStore
from relive.core.serving import Server
from relive.executor.v1 import executor_pb2 as pb
from tests.executor_fixtures import ray_session, wait_for  # noqa: F401

PRODUCERS = 3
PER_PRODUCER = 15_000


def _kill_store(store: EmbeddedStore) -> None:
    assert store.process is not None
    store.process.send_signal(signal.SIGKILL)
    store.process.wait(10)
    store.process = None


def test_store_sigkilled_and_restarted_during_ingestion_loses_and_doubles_nothing(
    config: Config,
    registry_server: Server,
    registry_channel: grpc.Channel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    ion = create_ion(registry_channel, "storefault")
    store = EmbeddedStore(tmp_path / "store")
    store.start()
    request.addfinalizer(store.stop)
    port = store.port
    env = service_env(
        config.with_(mongodb_uri=store.uri),
        RELIVE_REGISTRY_ENDPOINT=f"127.0.0.1:{registry_server.port}",
    )
    recorder = ServiceProcess("relive.recorder.server", env, tmp_path)
    target = f"127.0.0.1:{recorder.start()}"
    request.addfinalizer(recorder.stop)
    sinks = [
        EventSink(target, ion, producer_id=f"producer-{k}", max_queue=20_000, max_backoff_s=0.5)
        for k in range(PRODUCERS)
    ]
    sent = [0] * PRODUCERS

    def produce(k: int) -> None:
        for i in range(PER_PRODUCER):
            sinks[k].log_stat("x", float(i), step=i, node=f"n{k}")
            sent[k] += 1
            if i % 500 == 0:
                time.sleep(0.02)  # a steady stream, so the kill lands mid-ingestion

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(PRODUCERS)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: sum(s.stats.stored for s in sinks) >= PRODUCERS * PER_PRODUCER // 4, 120)
        acked_before = [s.stats.stored for s in sinks]
        _kill_store(store)
        time.sleep(1.5)  # appends fail meanwhile; the sinks back off and retry
        assert any(t.is_alive() for t in threads) or sum(sent) == PRODUCERS * PER_PRODUCER
        monkeypatch.setattr(embedded, "free_port", lambda host="127.0.0.1": port)
        store.start()  # the same data directory, on the same port
        assert store.port == port
        for t in threads:
            t.join(300)
        stats = [s.close(timeout=300) for s in sinks]
        assert sum(s.failed for s in stats) == 0, [s.failures[:3] for s in stats]
        # The kill landed mid-ingestion. The outage may reach the producers (they reconnect)
        # or be absorbed by the recorder's driver retrying its writes; either way, below,
        # nothing acknowledged may be lost and nothing stored twice.
        assert sum(acked_before) < PRODUCERS * PER_PRODUCER, "the kill came after ingestion"
        assert sum(sent) == PRODUCERS * PER_PRODUCER

        with RecorderClient(target, timeout=120) as client:
            events = list(client.list_events(ion, order="arrival", page_size=10_000))
        identities = [(e.producer_id, e.producer_sequence) for e in events]
        expected = {(f"producer-{k}", i + 1) for k in range(PRODUCERS) for i in range(PER_PRODUCER)}
        assert len(identities) == len(set(identities)), "an event was stored twice"
        assert set(identities) == expected, (
            f"{len(expected - set(identities))} events lost, "
            f"{len(set(identities) - expected)} unexpected"
        )
        assert sum(acked_before) > 0  # acknowledged before the kill, and all stored (above)
        assert len({e.sequence for e in events}) == len(events)
    finally:
        for s in sinks:
            if not s._closed:
                s.close(timeout=5)
        recorder.stop()
        store.stop()


SLOW_ION = """\
name: {name}
nodes:
  wait:
    pipeline:
      components:
        sleep: {{call: tests.executor_components:slow, params: {{seconds: 300}}}}
"""


def test_executor_sigkilled_during_a_run_marks_it_failed_after_restart(
    config: Config,
    registry_server: Server,
    recorder_server: Server,
    tmp_path: Path,
    ray_session: object,
    request: pytest.FixtureRequest,
) -> None:
    import ray

    registry_target = f"127.0.0.1:{registry_server.port}"
    recorder_target = f"127.0.0.1:{recorder_server.port}"
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW_ION.format(name="slowkill"))
    with grpc.insecure_channel(registry_target) as ch:
        RegistryClient(ch).register(path)
    env = service_env(
        config,
        RELIVE_REGISTRY_ENDPOINT=registry_target,
        RELIVE_RECORDER_ENDPOINT=recorder_target,
        # Attach to the session's Ray: the killed executor's tasks die with their driver.
        RELIVE_RAY_ADDRESS=ray.get_runtime_context().gcs_address,
    )
    executor = ServiceProcess("relive.executor.server", env, tmp_path)
    request.addfinalizer(executor.stop)
    port = executor.start(timeout=120)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = ExecutorClient(channel, user="tester")
    try:
        run = client.launch("slowkill")
        wait_for(lambda: client.get(run.name).state == pb.RUN_STATE_RUNNING, 120)
        time.sleep(2.0)  # the background writer has stored RUNNING by now
        with RecorderClient(recorder_target) as rec:
            before = {e.sequence for e in rec.list_events("slowkill", runs=[run.name])}
        assert before, "run.launched was acknowledged before the kill"

        executor.kill()
        executor.start(port=port, timeout=120)  # the same data (database), the same port

        after = client.get(run.name)
        assert after.state == pb.RUN_STATE_FAILED, pb.RunState.Name(after.state)
        assert after.is_terminal
        assert "restart" in after.error_message.lower(), after.error_message
        assert all(n.state != pb.RUN_STATE_RUNNING for n in after.nodes)
        assert [r.state for r in client.watch(run.name, timeout=30)] == [pb.RUN_STATE_FAILED]

        with RecorderClient(recorder_target) as rec:
            events = list(rec.list_events("slowkill", runs=[run.name]))
        assert before <= {e.sequence for e in events}, "acknowledged events were lost"
        failures = [e for e in events if e.WhichOneof("attributes") == "error"]
        assert failures, textwrap.shorten(str([e.type for e in events]), 300)
        assert failures[-1].type == "run.failed"
        assert failures[-1].error.message == after.error_message

        # A new run on the restarted executor works; cancelling ends it.
        again = client.launch("slowkill")
        wait_for(lambda: client.get(again.name).state == pb.RUN_STATE_RUNNING, 120)
        assert client.cancel(again.name).state == pb.RUN_STATE_CANCELLED
    finally:
        channel.close()
        executor.stop()
