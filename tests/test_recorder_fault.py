"""The recorder is SIGKILLed while 3 producers stream 100,000 events; nothing is lost or doubled."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
from test_recorder_support import ServiceProcess, create_ion, service_env

from relive.client.recorder import RecorderClient
from relive.client.sink import EventSink
from relive.core.config import Config
from relive.core.serving import Server

TOTAL = 100_000
PRODUCERS = 3


def test_sigkill_mid_stream_loses_and_doubles_nothing(
    config: Config, registry_server: Server, registry_channel: grpc.Channel, tmp_path: Path
) -> None:
    ion = create_ion(registry_channel, "fault")
    env = service_env(config, RELIVE_REGISTRY_ENDPOINT=f"127.0.0.1:{registry_server.port}")
    recorder = ServiceProcess("relive.recorder.server", env, tmp_path)
    port = recorder.start()
    target = f"127.0.0.1:{port}"
    sinks = [
        EventSink(target, ion, producer_id=f"producer-{k}", max_queue=20_000, max_backoff_s=0.5)
        for k in range(PRODUCERS)
    ]
    shares = [TOTAL // PRODUCERS + (1 if k < TOTAL % PRODUCERS else 0) for k in range(PRODUCERS)]

    def produce(k: int) -> None:
        for i in range(shares[k]):
            sinks[k].log_stat("x", float(i), step=i, node=f"n{k}")

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(PRODUCERS)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while sum(s.stats.stored for s in sinks) < TOTAL // 4:
            assert time.monotonic() < deadline, "the producers made no progress"
            time.sleep(0.02)
        recorder.kill()
        killed_at = sum(s.stats.stored for s in sinks)
        time.sleep(0.5)
        recorder.start(port=port)  # the same port: the sinks reconnect by themselves
        for t in threads:
            t.join(300)
        stats = [s.close(timeout=300) for s in sinks]
        assert killed_at < TOTAL
        assert sum(s.reconnects for s in stats) >= 1
        assert sum(s.failed for s in stats) == 0

        client = RecorderClient(target)
        events = list(client.list_events(ion, order="arrival", page_size=10_000))
        identities = {(e.producer_id, e.producer_sequence) for e in events}
        expected = {(f"producer-{k}", i + 1) for k in range(PRODUCERS) for i in range(shares[k])}
        assert len(events) == TOTAL
        assert identities == expected
        assert len({e.sequence for e in events}) == TOTAL
        client.close()
    finally:
        for s in sinks:
            if not s._closed:
                s.close(timeout=5)
        recorder.stop()
