"""The console stays responsive on a window of 100,000 events: the server answers a histogram
(counts per lane per bucket, errors and human actions one by one) and the page draws it on a
canvas; individual events are fetched only once the window is zoomed in."""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from relive.client.registry import RegistryClient
from relive.console.server import ConsoleServer, serve
from relive.core.config import Config
from relive.recorder.v1 import event_pb2, recorder_pb2, recorder_pb2_grpc
from relive.stack.runner import Stack
from tests.test_console import CHROMIUM, CHROMIUM_ARGS

playwright_api = pytest.importorskip("playwright.sync_api")

REPO_ROOT = Path(__file__).resolve().parent.parent
EVENTS = 100_000
HOUR_MS = 3_600_000
NODES = ["train", "approve", "infer", "infer_control", "canary"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


def _events(ion: str, start_ms: int) -> Iterator[event_pb2.Event]:
    """An hour of a busy streaming ION: stats mostly, an error every 1,000 events, a person's
    action every 5,000."""
    rng = random.Random(7)
    producer = f"scale-{uuid.uuid4().hex[:8]}"
    run = f"{ion}/runs/load-1"
    for i in range(EVENTS):
        e = event_pb2.Event(
            producer_id=producer,
            producer_sequence=i + 1,
            hlc=event_pb2.Hlc(physical_ms=start_ms + i * HOUR_MS // EVENTS),
            node=NODES[i % len(NODES)],
            run=run,
        )
        if i % 1000 == 500:
            e.node = rng.choice(NODES)
            e.type = "error"
            e.error.error_type = "TimeoutError"
            e.error.message = f"batch {i} timed out"
        elif i % 5000 == 2700:
            e.node = rng.choice(NODES)
            e.type = "approval"
            e.human_action.user = "ana"
            e.human_action.action = "approve"
        else:
            e.type = "stat"
            e.stat.name = "latency_ms"
            e.stat.value = rng.random() * 100
        yield e


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    data = tmp_path_factory.mktemp("console-scale") / "data"
    # Registry and recorder only: the histogram path needs no executor.
    stack = Stack(
        Config(data_dir=data, code_path=(str(REPO_ROOT),), grace_s=0.5),
        services=("registry", "recorder"),
    )
    endpoints = stack.start()
    endpoints["executor"] = "127.0.0.1:1"  # nothing listens: run states are simply absent
    server: ConsoleServer | None = None
    try:
        with grpc.insecure_channel(endpoints["registry"]) as ch:
            ion = RegistryClient(ch).register(REPO_ROOT / "examples/churn/ion.yaml").ion.name
        start_ms = int(time.time() * 1000) - 2 * HOUR_MS
        batch: list[event_pb2.Event] = []
        with grpc.insecure_channel(endpoints["recorder"]) as ch:
            recorder = recorder_pb2_grpc.RecorderServiceStub(ch)
            for e in _events(ion, start_ms):
                batch.append(e)
                if len(batch) == 10_000:
                    resp = recorder.AppendEvents(
                        recorder_pb2.AppendEventsRequest(parent=ion, events=batch), timeout=300
                    )
                    assert resp.stored_count == len(batch), resp.rejections[:3]
                    batch = []
        server, port = serve(endpoints, port=0)
        yield f"http://127.0.0.1:{port}", ion, start_ms
    finally:
        if server is not None:
            server.stop()
        stack.stop()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=120) as r:
        return json.load(r)


def test_histogram_of_100k_events_is_one_small_answer(console: tuple[str, str, int]) -> None:
    url, ion, start_ms = console
    ion_id = ion.removeprefix("ions/")
    hist = _get(f"{url}/api/ions/{ion_id}/histogram?buckets=400")  # indexes on first use
    assert hist["total"] == EVENTS
    assert sum(sum(lane["counts"]) for lane in hist["lanes"]) == EVENTS
    assert {lane["node"] for lane in hist["lanes"]} == set(NODES)
    assert len([m for m in hist["marks"] if m["kind"] == "error"]) == EVENTS // 1000
    assert len([m for m in hist["marks"] if m["kind"] == "human_action"]) == EVENTS // 5000
    # Warm: a new window of the whole hour answers well under a second.
    t0 = time.monotonic()
    again = _get(
        f"{url}/api/ions/{ion_id}/histogram?buckets=400&start={start_ms}&end={start_ms + HOUR_MS}"
    )
    assert time.monotonic() - t0 < 2.0
    assert again["total"] == EVENTS
    assert len(json.dumps(again)) < 200_000  # a few counts per pixel column, not 100k events


def test_page_draws_100k_window_and_zooms_into_events(console: tuple[str, str, int]) -> None:
    url, ion, start_ms = console
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.monotonic()
        page.goto(f"{url}/ions/{ion.removeprefix('ions/')}")
        page.wait_for_selector('#timeline[data-ready="1"]', timeout=60_000)
        first = time.monotonic() - t0
        canvas = page.locator("#timeline")
        assert canvas.get_attribute("data-mode") == "histogram"
        assert int(canvas.get_attribute("data-total")) == EVENTS
        assert int(canvas.get_attribute("data-marks")) == EVENTS // 1000 + EVENTS // 5000
        assert first < 30, f"first draw of 100k events took {first:.1f} s"
        shots = Path(os.environ.get("RELIVE_SCREENSHOT_DIR") or REPO_ROOT / ".relive" / "shots")
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "console-100k.png"))

        # Zooming the whole window re-aggregates on the server and redraws at once.
        t0 = time.monotonic()
        page.evaluate("document.querySelector('#timeline').dataset.ready = '0'")
        page.click("#zoom-in")
        page.wait_for_selector('#timeline[data-ready="1"]')
        assert time.monotonic() - t0 < 5.0
        assert canvas.get_attribute("data-mode") == "histogram"

        # A one-minute window holds about 1,700 events: now they are fetched and drawn one by one.
        minute = start_ms + HOUR_MS // 2
        page.fill("#from", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(minute / 1000)))
        page.fill("#to", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(minute / 1000 + 60)))
        page.evaluate("document.querySelector('#timeline').dataset.ready = '0'")
        page.click("#apply-window")
        page.wait_for_selector('#timeline[data-ready="1"]')
        assert canvas.get_attribute("data-mode") == "events"
        assert 1000 < int(canvas.get_attribute("data-total")) < 3000
        assert page.locator("#events-table tbody tr").count() > 1000
        browser.close()
        assert not errors, errors


def test_replay_of_a_100k_capture_streams_every_event(console: tuple[str, str, int]) -> None:
    url, ion, start_ms = console
    body = json.dumps(
        {"ion": ion, "id": "whole-hour", "start": start_ms, "end": start_ms + HOUR_MS}
    ).encode()
    request = urllib.request.Request(
        f"{url}/api/captures", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        capture = json.load(r)
    assert capture["owner"]
    t0 = time.monotonic()
    seen = 0
    last = 0
    kinds: list[str] = []
    with urllib.request.urlopen(
        f"{url}/api/replay?capture={capture['name']}&speed=0", timeout=300
    ) as stream:
        kind = ""
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: ") :]
                kinds.append(kind)
            elif line.startswith("data: ") and kind == "events":
                events = json.loads(line[len("data: ") :])["events"]
                seen += len(events)
                # On the playback clock, in timeline order.
                assert all(e["playback_ms"] >= last for e in events[:1])
                last = events[-1]["playback_ms"]
            elif kind == "end":
                break
    assert kinds[0] == "capture" and kinds[-1] == "end"
    assert seen == EVENTS
    assert time.monotonic() - t0 < 120
