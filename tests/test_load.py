"""Load: 20 producers stream through the SDK while users list, watch and capture.

A shorter run of ``bench/load.py``: the recorder is a child process, the producers are
threads in a few processes, and at the end every sent event is stored exactly once, counted
by (producer id, producer sequence) through ListEvents.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from test_recorder_support import ServiceProcess, create_ion, service_env

from bench.load import run_load
from relive.core.config import Config
from relive.core.serving import Server


def test_twenty_producers_lose_and_double_nothing_while_users_read(
    config: Config, registry_server: Server, registry_channel: grpc.Channel, tmp_path: Path
) -> None:
    ion = create_ion(registry_channel, "load")
    env = service_env(config, RELIVE_REGISTRY_ENDPOINT=f"127.0.0.1:{registry_server.port}")
    recorder = ServiceProcess("relive.recorder.server", env, tmp_path)
    target = f"127.0.0.1:{recorder.start()}"
    try:
        report = run_load(target, ion, producers=20, seconds=10.0, rate=200.0, processes=2)
    finally:
        recorder.stop()
    assert report["producer_errors"] == [] and report["user_errors"] == [], report
    assert report["events_sent"] >= 20 * 10 * 200 * 0.8, report  # the producers kept pace
    assert report["lost"] == 0, report
    assert report["duplicates"] == 0, report
    assert report["unexpected"] == 0, report
    assert report["events_stored"] == report["events_sent"] == report["acknowledged"], report
    assert report["refused"] == 0, report
    # The users were served while the producers streamed.
    assert report["list_calls"] > 0 and report["captures"] > 0, report
    assert report["watch_caught_up"] and report["watch_events"] == report["events_stored"], report
