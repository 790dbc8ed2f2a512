"""The console in a real headless Chromium against the real stack (store, registry, recorder,
executor on a local Ray): open an ION, select a window, capture it, replay it, export it,
relaunch it and see every node MATCH.

The steps share one browser page and run in file order, as a person would click through them.
Each main screen is saved under docs/ as a screenshot.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from relive.client.executor import ExecutorClient
from relive.client.registry import RegistryClient
from relive.console.server import ConsoleServer, serve
from relive.core.config import Config
from relive.executor.v1 import executor_pb2
from relive.recorder.v1 import event_pb2, recorder_pb2, recorder_pb2_grpc
from relive.stack.runner import Stack

playwright_api = pytest.importorskip("playwright.sync_api")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Screenshots of each main screen; `make screenshots` writes them into docs/.
DOCS = Path(os.environ.get("RELIVE_SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "relive-shots")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


@dataclass
class Seeded:
    ion: str
    run: executor_pb2.Run
    error_span: str


@dataclass
class Env:
    endpoints: dict[str, str]
    console: ConsoleServer
    url: str
    recorder: Any
    seeded: Seeded


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not after {timeout:g} s")


def _seed(endpoints: dict[str, str], recorder: Any) -> Seeded:
    """A real run of the approval example, approved by a person, plus an error to diagnose."""
    with (
        grpc.insecure_channel(endpoints["registry"]) as reg_ch,
        grpc.insecure_channel(endpoints["executor"]) as exe_ch,
    ):
        ion = RegistryClient(reg_ch).register(REPO_ROOT / "examples/approval/ion.yaml").ion.name
        executor = ExecutorClient(exe_ch, user="ana")
        run = executor.launch(ion, seed=1234)
        _wait(
            lambda: executor.get(run.name).state == executor_pb2.RUN_STATE_WAITING,
            240,
            "the run waits at its approval gate",
        )
        executor.approve(run.name, "gate", comment="accuracy looks fine")
        run = executor.wait(run.name, timeout=300)
        assert run.state == executor_pb2.RUN_STATE_SUCCEEDED, run.error_message
    # A monitoring agent outside the run reports a failure in the same trace, under a span
    # of its own: it is on the timeline (and in the capture) but not part of the run's facts.
    end_ms = run.end_time.ToMilliseconds()
    trace = run.trace_id or uuid.uuid4().hex
    root, child = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    producer = f"console-test-{uuid.uuid4().hex[:8]}"

    def event(seq: int, ms: int, type_: str, **kw: Any) -> event_pb2.Event:
        return event_pb2.Event(
            producer_id=producer,
            producer_sequence=seq,
            hlc=event_pb2.Hlc(physical_ms=ms),
            type=type_,
            node="infer",
            trace_id=trace,
            **kw,
        )

    probe = event(1, end_ms - 40, "span", span_id=root)
    probe.span.name = "monitor.probe"
    probe.span.service_name = "monitor"
    probe.span.start_time.FromMilliseconds(end_ms - 60)
    probe.span.end_time.FromMilliseconds(end_ms - 20)
    check = event(2, end_ms - 30, "span", span_id=child)
    check.span.name = "monitor.check_scores"
    check.span.service_name = "monitor"
    check.span.parent_span_id = root
    check.span.status_code = 2
    check.span.start_time.FromMilliseconds(end_ms - 50)
    check.span.end_time.FromMilliseconds(end_ms - 30)
    error = event(3, end_ms - 35, "monitor.error", span_id=child)
    error.error.error_type = "ScoreDriftError"
    error.error.message = "scores drifted past 0.2 on batch 3"
    resp = recorder.AppendEvents(
        recorder_pb2.AppendEventsRequest(parent=ion, events=[probe, check, error]), timeout=30
    )
    assert not resp.rejections, resp.rejections
    return Seeded(ion=ion, run=run, error_span=child)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    data = tmp_path_factory.mktemp("console") / "data"
    stack = Stack(Config(data_dir=data, code_path=(str(REPO_ROOT),), grace_s=0.5))
    endpoints = stack.start()
    channel = grpc.insecure_channel(endpoints["recorder"])
    recorder = recorder_pb2_grpc.RecorderServiceStub(channel)
    console: ConsoleServer | None = None
    try:
        seeded = _seed(endpoints, recorder)
        console, port = serve(endpoints, port=0)
        yield Env(endpoints, console, f"http://127.0.0.1:{port}", recorder, seeded)
    finally:
        if console is not None:
            console.stop()
        channel.close()
        stack.stop()


@pytest.fixture(scope="module")
def page(env: Env) -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1440, "height": 900}, accept_downloads=True
        )
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(30_000)
        yield pg
        context.close()
        browser.close()
        assert not errors, errors


def _shot(page: Any, name: str) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS / name))


def _capture_name(env: Env) -> str:
    return f"{env.seeded.ion}/captures/incident-1"


def test_api_errors_are_json_with_status(env: Env) -> None:
    with pytest.raises(urllib.error.HTTPError) as got:
        urllib.request.urlopen(f"{env.url}/api/ions/no-such-ion", timeout=30)
    assert got.value.code == 404
    body = json.loads(got.value.read())
    assert body["error"]["code"] == "NOT_FOUND"


def test_1_open_an_ion(env: Env, page: Any) -> None:
    page.goto(env.url)
    page.click(f'#ion-list li[data-ion="{env.seeded.ion}"]')
    page.wait_for_selector('#timeline[data-ready="1"]')
    canvas = page.locator("#timeline")
    lanes = canvas.get_attribute("data-lanes").split(",")
    # A lane per node, in dependency order, plus one for run-level events.
    assert [n for n in lanes if n != "(run)"][:3] == ["train", "gate", "infer"]
    assert int(canvas.get_attribute("data-total")) > 10
    # The approval (a person's action) and the injected error are marked one by one.
    assert int(canvas.get_attribute("data-marks")) >= 2
    assert page.locator("#events-table tr.k-error").count() >= 1
    assert page.locator("#events-table tr.k-human_action").count() >= 1
    assert page.inner_text("#ion-title") == "approval"
    _shot(page, "console-timeline.png")


def test_event_details_with_launch_spec_and_span_tree(env: Env, page: Any) -> None:
    page.click("#events-table tr.k-human_action")
    page.wait_for_selector("#details[data-loaded]")
    attributes = json.loads(page.inner_text("#details-attributes"))
    assert attributes["human_action"]["user"] == "ana"
    assert attributes["run"] == env.seeded.run.name
    spec = json.loads(page.inner_text("#details-spec"))
    assert spec["seed"] in ("1234", 1234)
    assert spec["revision"].startswith(env.seeded.ion)
    _shot(page, "console-details.png")

    page.click("#tabs [data-tab=events]")
    page.click("#events-table tr.k-error")
    page.wait_for_function(
        "document.querySelector('#details-attributes').textContent.includes('ScoreDriftError')"
    )
    # The error's trace, as a tree: the failing check nested under the probe.
    child = page.locator(f'#span-tree .span[data-span="{env.seeded.error_span}"]')
    child.wait_for()
    assert "monitor.check_scores" in child.inner_text()
    assert "current" in (child.get_attribute("class") or "")
    tree = page.inner_text("#span-tree")
    assert tree.index("monitor.probe") < tree.index("monitor.check_scores")


def test_2_select_a_window(env: Env, page: Any) -> None:
    page.click("#tabs [data-tab=events]")
    box = page.locator("#timeline").bounding_box()
    y = box["y"] + box["height"] * 0.6
    # From the left edge of the plot to its right edge: the whole default window.
    page.mouse.move(box["x"] + 152, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, y, steps=4)
    page.mouse.move(box["x"] + box["width"] - 10, y, steps=4)
    page.mouse.up()
    page.wait_for_selector("#selection-bar:not([hidden])")
    assert "→" in page.inner_text("#selection-label")


def test_3_create_a_capture(env: Env, page: Any) -> None:
    page.fill("#capture-id", "incident-1")
    page.fill("#capture-description", "score drift after the approval")
    page.click("#capture-create")
    item = page.locator(f'#capture-list li[data-capture="{_capture_name(env)}"]')
    item.wait_for()
    assert "by local" in item.inner_text()  # everyone's captures, each with its owner
    assert "score drift" in item.inner_text()
    got = env.recorder.GetCapture(
        recorder_pb2.GetCaptureRequest(name=_capture_name(env)), timeout=30
    )
    run = env.seeded.run
    assert got.start_time.ToMilliseconds() <= run.create_time.ToMilliseconds()
    assert got.end_time.ToMilliseconds() >= run.end_time.ToMilliseconds()
    _shot(page, "console-capture.png")


def _seek(page: Any, permille: int) -> None:
    """Moves the seek slider as a drag would, to a point of the capture's window."""
    page.eval_on_selector(
        "#replay-seek",
        f"e => {{ e.value = {permille}; e.dispatchEvent(new Event('change')); }}",
    )


def test_4_replay_it(env: Env, page: Any) -> None:
    page.click(f'#capture-list li[data-capture="{_capture_name(env)}"] [data-action=replay]')
    page.wait_for_selector("#replay:not([hidden])")
    # Real time: it plays, then pauses where it was.
    page.select_option("#replay-speed", "1")
    page.click("#replay-play")
    page.wait_for_selector('#replay[data-state="playing"]')
    page.wait_for_timeout(1500)
    page.click("#replay-pause")
    page.wait_for_selector('#replay[data-state="paused"]')
    paused_at = page.inner_text("#replay-clock")
    page.wait_for_timeout(600)
    assert page.inner_text("#replay-clock") == paused_at

    # As fast as possible, from the start: every event of the window.
    page.select_option("#replay-speed", "0")
    _seek(page, 0)
    page.click("#replay-play")
    page.wait_for_selector('#replay[data-state="ended"]', timeout=120_000)
    full = int(page.get_attribute("#replay", "data-count"))
    assert full > 10

    # Seek to the middle: only the second half is replayed.
    _seek(page, 500)
    page.click("#replay-play")
    page.wait_for_selector('#replay[data-state="ended"]', timeout=120_000)
    half = int(page.get_attribute("#replay", "data-count"))
    assert 0 < half < full

    # A slower replay, paused partway, for the screenshot.
    _seek(page, 0)
    page.select_option("#replay-speed", "2")
    page.click("#replay-play")
    page.wait_for_function("Number(document.querySelector('#replay').dataset.count) > 5")
    page.click("#replay-pause")
    _shot(page, "console-replay.png")


def test_5_export_it(env: Env, page: Any, tmp_path: Path) -> None:
    link = page.locator(
        f'#capture-list li[data-capture="{_capture_name(env)}"] [data-action=export]'
    )
    try:
        with page.expect_download(timeout=120_000) as download:
            link.click()
    except playwright_api.TimeoutError:
        toast = page.inner_text("#toast") if page.is_visible("#toast") else ""
        raise AssertionError(f"no download; the page says: {toast!r}") from None
    target = tmp_path / download.value.suggested_filename
    download.value.save_as(target)
    assert target.name == "incident-1.tar.gz"
    with tarfile.open(target, "r:gz") as tar:
        names = [n.lstrip("./") for n in tar.getnames()]
        manifest_name = next(n for n in tar.getnames() if n.lstrip("./").endswith("MANIFEST.json"))
        manifest_file = tar.extractfile(manifest_name)
        assert manifest_file is not None
        manifest = json.load(io.TextIOWrapper(manifest_file))
    assert any(n.endswith("events.jsonl") for n in names)
    assert manifest


def test_6_relaunch_it_and_see_match(env: Env, page: Any) -> None:
    page.click(f'#capture-list li[data-capture="{_capture_name(env)}"] [data-action=relaunch]')
    page.wait_for_selector("#relaunch:not([hidden])")
    page.click("#relaunch-go")
    page.wait_for_function(
        "document.querySelector('#relaunch').dataset.verification"
        " || !document.querySelector('#relaunch-error').hidden",
        timeout=420_000,
    )
    assert page.is_hidden("#relaunch-error"), page.inner_text("#relaunch-error")
    assert page.get_attribute("#relaunch", "data-verification") == "MATCH", page.inner_text(
        "#relaunch"
    )
    rows = page.locator("#relaunch-nodes tbody tr")
    statuses = {
        rows.nth(i).get_attribute("data-node"): rows.nth(i).get_attribute("data-status")
        for i in range(rows.count())
    }
    assert set(statuses) >= {"train", "gate", "infer"}
    assert set(statuses.values()) == {"MATCH"}
    _shot(page, "console-verify.png")


def test_live_mode_follows_new_events(env: Env, page: Any) -> None:
    page.click("#tabs [data-tab=events]")
    page.click(f'#ion-list li[data-ion="{env.seeded.ion}"]')
    page.click("#live-toggle")
    page.wait_for_selector("#live-toggle.on")
    # The live window ends just after now.
    page.wait_for_function(
        "document.querySelector('#to').value"
        " >= new Date(Date.now() - new Date().getTimezoneOffset() * 60000)"
        ".toISOString().slice(0, 19)"
    )
    now = int(time.time() * 1000)
    fresh = event_pb2.Event(
        event_id=uuid.uuid4().hex,
        hlc=event_pb2.Hlc(physical_ms=now),
        type="operator.note",
        node="infer",
    )
    fresh.human_action.user = "bo"
    fresh.human_action.action = "acknowledge"
    fresh.human_action.comment = "looking at the drift"
    env.recorder.AppendEvents(
        recorder_pb2.AppendEventsRequest(parent=env.seeded.ion, events=[fresh]), timeout=30
    )
    # It shows up without anyone touching the page.
    page.wait_for_selector(
        "#events-table tr.k-human_action >> text=looking at the drift", timeout=30_000
    )
    assert int(page.get_attribute("#timeline", "data-marks")) >= 3
    page.wait_for_timeout(1600)  # one more step of the live window, for the screenshot
    _shot(page, "console-live.png")
    page.click("#live-toggle")
    page.wait_for_selector("#live-toggle:not(.on)")


def test_a_run_bar_shows_the_run_and_its_spec(env: Env, page: Any) -> None:
    run = env.seeded.run.name
    page.click("#tabs [data-tab=events]")
    page.click('[data-preset="all"]')
    page.wait_for_function(f"S.hits.some(h => h.type === 'run' && h.run.run === '{run}')")
    # A point of the run's bar that no event mark covers (marks win the hit test). The page
    # may redraw between reading the layout and the click, so read it again and retry.
    for attempt in range(3):
        x, y = page.evaluate(
            f"""(() => {{
                const h = S.hits.find(h => h.type === 'run' && h.run.run === '{run}');
                const y = (h.y0 + h.y1) / 2;
                for (let x = h.x0 + 1; x <= h.x1 - 1; x += 1) {{
                    const got = hitAt(x, y);
                    if (got && got.type === 'run' && got.run.run === '{run}') return [x, y];
                }}
                return [(h.x0 + h.x1) / 2, y];
            }})()"""
        )
        box = page.locator("#timeline").bounding_box()
        page.mouse.click(box["x"] + x, box["y"] + y)
        try:
            page.wait_for_selector(f'#details[data-loaded="{run}"]', timeout=10_000)
            break
        except playwright_api.TimeoutError:
            if attempt == 2:
                raise
            page.click('[data-preset="all"]')
            page.wait_for_function(f"S.hits.some(h => h.type === 'run' && h.run.run === '{run}')")
    assert "SUCCEEDED" in page.inner_text("#details-title")
    spec = json.loads(page.inner_text("#details-spec"))
    assert spec["seed"] in ("1234", 1234)
    assert page.locator("#span-tree .span").count() >= 3
