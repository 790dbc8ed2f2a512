"""The Node.js client (clients/node) against the real registry, recorder and executor.

A command component written in Node records stats and a model digest between Python
events; its events must sit in the timeline in causal order between them, once each, even
when the Node client resends a batch whose ack it lost, and even when the parent's clock
runs ahead of the child's. The executor runs the same component inside a launched run.
Skipped only when ``node`` is not on PATH; ``npm ci`` runs when node_modules is stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from relive.client.channel import connect_channel
from relive.client.sink import EventSink
from relive.core.config import Config
from relive.core.serving import Server
from relive.executor.v1 import executor_pb2
from relive.hlc import HybridLogicalClock, Stamp, wall_ms
from relive.recorder.v1 import event_pb2, recorder_pb2, recorder_pb2_grpc
from relive.registry.v1 import registry_pb2, registry_pb2_grpc
from tests import executor_fixtures
from tests.executor_fixtures import InProcessStack

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / "clients" / "node"
SCORE = NODE_DIR / "examples" / "score.js"
NODE = shutil.which("node")
NPM = shutil.which("npm")

# The executor's fixtures: one Ray per session, and a full stack per test.
ray_session = executor_fixtures.ray_session
stack = executor_fixtures.stack

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not on PATH: the Node.js client (clients/node) is not tested"
)

ION_YAML = """\
name: polyglot
nodes:
  prep:
    pipeline:
      components:
        load: {call: examples.churn.steps:load, params: {dataset: breast_cancer}}
  infer:
    pipeline:
      components:
        score: {command: [node, clients/node/examples/score.js]}
"""
ION = "ions/polyglot"
RUN = f"{ION}/runs/r1"
# The parent's clock runs a minute ahead of the machine's: without update(parent) in the
# child, every Node event would sort before the Python events that caused it.
SKEW_MS = 60_000
ROWS = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
WEIGHTS = [0.5, 0.25]


def _node_modules_ready() -> bool:
    """npm writes node_modules/.package-lock.json; stale when package-lock.json is newer."""
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    return marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """clients/node/node_modules, installed with `npm ci` when missing or stale."""
    if not _node_modules_ready():
        if NPM is None:
            pytest.fail(
                "clients/node/node_modules is missing and npm is not on PATH: "
                "run `make setup` or `cd clients/node && npm ci`"
            )
        done = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.fail(
                "`npm ci` in clients/node failed (is the npm registry reachable?):\n"
                + done.stdout[-2000:]
                + done.stderr[-2000:]
            )
    return NODE_DIR / "node_modules"


def _node_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without RELIVE_* and trace settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RELIVE_") and k not in ("TRACEPARENT", "NODE_OPTIONS")
    }
    env.update(extra)
    return env


def test_node_unit_tests_pass(node_modules: Path) -> None:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "--test"],
        cwd=NODE_DIR,
        env=_node_env({}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout


# ---- the HLC rules are the same in both languages -------------------------------------------


def _replay_python(ops: list[list[Any]]) -> list[str]:
    wall = [0]
    clock = HybridLogicalClock(physical=lambda: wall[0])
    out = []
    for op in ops:
        wall[0] = op[1]
        stamp = clock.now() if op[0] == "now" else clock.update(op[2])
        out.append(stamp.encode())
    return out


def _replay_node(ops: list[list[Any]]) -> list[str]:
    assert NODE is not None
    script = (
        'import { readFileSync } from "node:fs";'
        'import { Hlc, formatHlc } from "./src/hlc.js";'
        "const ops = JSON.parse(readFileSync(0, 'utf8'));"
        "let wall = 0; const hlc = new Hlc({ clock: () => wall });"
        "const out = ops.map(([op, w, remote]) => { wall = w;"
        " return formatHlc(op === 'now' ? hlc.now() : hlc.update(remote)); });"
        "process.stdout.write(JSON.stringify(out));"
    )
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        cwd=NODE_DIR,
        input=json.dumps(ops),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: list[str] = json.loads(done.stdout)
    return result


def test_node_and_python_hlc_follow_the_same_rules(node_modules: Path) -> None:
    rng = random.Random(6)
    ops: list[list[Any]] = []
    wall = 1_700_000_000_000
    for _ in range(2000):
        wall += rng.choice([-5, -1, 0, 0, 0, 1, 3])  # clocks stall and step back
        if rng.random() < 0.3:
            remote = f"{wall + rng.randint(-10, 10)}.{rng.randint(0, 5)}"
            ops.append(["update", wall, remote])
        else:
            ops.append(["now", wall])
    assert _replay_node(ops) == _replay_python(ops)


# ---- a Node command component in the timeline ----------------------------------------------


def python_sink(endpoint: str) -> EventSink:
    """The Python SDK's sink on a clock that runs ahead of the machine's."""
    return EventSink(
        endpoint,
        "polyglot",
        clock=HybridLogicalClock(physical=lambda: wall_ms() + SKEW_MS),
        run=RUN,
        node="prep",
        component="load",
    )


@pytest.fixture
def recorder_stub(
    registry_channel: grpc.Channel, recorder_server: Server
) -> Iterator[recorder_pb2_grpc.RecorderServiceStub]:
    registry = registry_pb2_grpc.RegistryServiceStub(registry_channel)
    registry.CreateIon(
        registry_pb2.CreateIonRequest(ion_id="polyglot", definition_yaml=ION_YAML), timeout=30
    )
    with grpc.insecure_channel(f"127.0.0.1:{recorder_server.port}") as channel:
        yield recorder_pb2_grpc.RecorderServiceStub(channel)


def run_score(endpoint: str, parent: Stamp | None, trace_id: str, span_id: str, **env: str) -> Any:
    """Runs examples/score.js as the executor would; ``parent=None`` leaves RELIVE_HLC unset."""
    assert NODE is not None
    variables = {
        "RELIVE_RECORDER_ENDPOINT": endpoint,
        "RELIVE_ION": "polyglot",
        "RELIVE_RUN": "r1",
        "RELIVE_NODE": "infer",
        "RELIVE_COMPONENT": "score",
        "TRACEPARENT": f"00-{trace_id}-{span_id}-01",
        **env,
    }
    if parent is not None:
        variables["RELIVE_HLC"] = parent.encode()
    done = subprocess.run(
        [NODE, str(SCORE)],
        cwd=REPO,
        input=json.dumps({"rows": ROWS, "weights": WEIGHTS}),
        env=_node_env(variables),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def list_timeline(stub: recorder_pb2_grpc.RecorderServiceStub) -> list[event_pb2.Event]:
    events: list[event_pb2.Event] = []
    token = ""
    while True:
        page = stub.ListEvents(
            recorder_pb2.ListEventsRequest(
                parent=ION,
                order=recorder_pb2.EVENT_ORDER_TIMELINE,
                page_size=5,
                page_token=token,
            ),
            timeout=30,
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


def test_node_component_events_sit_between_the_python_events_once_each(
    node_modules: Path,
    recorder_server: Server,
    recorder_stub: recorder_pb2_grpc.RecorderServiceStub,
) -> None:
    endpoint = f"127.0.0.1:{recorder_server.port}"
    py = python_sink(endpoint)
    for i in range(3):
        py.log_stat("before", i)
    py.flush()
    # The parent hands its clock to the child: the send event of the process hop.
    parent = py.clock.now()
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    out = run_score(
        endpoint,
        parent,
        trace_id,
        span_id,
        # The first ack is dropped after the recorder stored the batch: a resend.
        RELIVE_FAULT_LOSE_ACKS="1",
    )
    # The child's final clock comes back with its result: the receive event.
    py.clock.update(out["hlc"])
    for i in range(3):
        py.log_stat("after", i)
    stats = py.close()
    assert not stats.failures, stats.failures

    assert out["duplicates"] == out["events"] == 7, "the whole batch was sent twice"

    timeline = list_timeline(recorder_stub)
    who = [
        "py:" + e.stat.name if e.producer_id == py.producer_id else "node:" + e.type
        for e in timeline
    ]
    assert who == [
        "py:before",
        "py:before",
        "py:before",
        "node:component.started",
        "node:model.loaded",
        "node:stat",
        "node:stat",
        "node:predictions.digest",
        "node:log",
        "node:component.finished",
        "py:after",
        "py:after",
        "py:after",
    ]
    identities = [(e.producer_id, e.producer_sequence) for e in timeline]
    assert len(set(identities)) == len(identities) == 13, "no event was stored twice"
    assert len({e.sequence for e in timeline}) == 13

    node_events = [e for e in timeline if e.producer_id == out["producer_id"]]
    assert [e.producer_sequence for e in node_events] == list(range(1, 8))
    assert all((e.hlc.physical_ms, e.hlc.logical) > tuple(parent) for e in node_events)
    assert all(e.trace_id == trace_id and e.span_id == span_id for e in node_events)
    assert all((e.run, e.node, e.component) == (RUN, "infer", "score") for e in node_events)

    by_name = {e.stat.name: e.stat for e in node_events if e.kind == event_pb2.EVENT_KIND_STAT}
    scores = [sum(x * w for x, w in zip(row, WEIGHTS, strict=True)) for row in ROWS]
    assert by_name["rows"].value == len(ROWS)
    assert by_name["mean_score"].value == pytest.approx(sum(scores) / len(scores))
    assert dict(by_name["mean_score"].labels) == {"language": "node"}

    # The model digest is the sha256 of the model's canonical JSON, computed here on its own.
    digest = hashlib.sha256(
        json.dumps({"kind": "linear", "weights": WEIGHTS}, separators=(",", ":")).encode()
    ).hexdigest()
    (model,) = [e for e in node_events if e.kind == event_pb2.EVENT_KIND_MODEL]
    assert model.model.sha256 == digest == out["model_sha256"]
    assert model.model.action == "loaded"
    assert model.model.model_version == f"models/node-linear/versions/{digest[:12]}"

    (custom,) = [e for e in node_events if e.kind == event_pb2.EVENT_KIND_CUSTOM]
    assert custom.custom.data["sha256"] == out["predictions_sha256"]
    assert custom.custom.data["count"] == len(ROWS)


def test_without_the_parent_hlc_a_skewed_parent_would_come_after_its_child(
    node_modules: Path,
    recorder_server: Server,
    recorder_stub: recorder_pb2_grpc.RecorderServiceStub,
) -> None:
    """The control for the test above: the skew is real, so RELIVE_HLC is what orders them."""
    endpoint = f"127.0.0.1:{recorder_server.port}"
    py = python_sink(endpoint)
    py.log_stat("before", 0)
    py.close()
    out = run_score(endpoint, None, secrets.token_hex(16), secrets.token_hex(8))
    timeline = list_timeline(recorder_stub)
    assert [e.producer_id for e in timeline] == [out["producer_id"]] * 7 + [py.producer_id]


def test_node_component_reports_an_unknown_ion(
    node_modules: Path,
    recorder_server: Server,
    recorder_stub: recorder_pb2_grpc.RecorderServiceStub,
) -> None:
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(SCORE)],
        cwd=REPO,
        input=json.dumps({"rows": ROWS}),
        env=_node_env(
            {
                "RELIVE_RECORDER_ENDPOINT": f"127.0.0.1:{recorder_server.port}",
                "RELIVE_ION": "no-such-ion",
            }
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr and "ions/no-such-ion" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, "one clear line, no stack trace"


def test_node_client_speaks_tls_with_a_bearer_token(
    node_modules: Path, config: Config, tmp_path: Path, self_signed: tuple[Path, Path]
) -> None:
    from relive.recorder.server import create_server

    key, cert = self_signed
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n  tok-node: {user: node, project: polyglot, role: admin}\n")
    server, port = create_server(
        config.with_(auth=True, auth_tokens_file=tokens, tls_cert=cert, tls_key=key)
    )
    server.start()
    try:
        base = {"RELIVE_RECORDER_ENDPOINT": f"localhost:{port}", "RELIVE_TLS_CA": str(cert)}
        out = run_score(
            f"localhost:{port}",
            Stamp(wall_ms(), 0),
            secrets.token_hex(16),
            secrets.token_hex(8),
            RELIVE_TLS_CA=str(cert),
            RELIVE_TOKEN="tok-node",
        )
        assert out["events"] == 7

        with connect_channel(f"localhost:{port}", token="tok-node", tls_ca=cert, environ={}) as ch:
            timeline = list_timeline(recorder_pb2_grpc.RecorderServiceStub(ch))
        assert [e.producer_id for e in timeline] == [out["producer_id"]] * 7

        assert NODE is not None
        anonymous = subprocess.run(
            [NODE, str(SCORE)],
            cwd=REPO,
            input=json.dumps({"rows": ROWS}),
            env=_node_env({**base, "RELIVE_ION": "polyglot"}),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert anonymous.returncode == 1
        assert "UNAUTHENTICATED" in anonymous.stderr, anonymous.stderr
    finally:
        server.stop(0.5)


RUN_ION_YAML = """\
name: polyglot-run
nodes:
  train:
    pipeline:
      components:
        load: {call: examples.patterns.steps:load, params: {dataset: iris}}
        score:
          command: [node, clients/node/examples/score.js]
          after: [load]
          params: {rows: [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], weights: [0.5, 0.25]}
"""


def test_node_command_component_in_a_run(
    node_modules: Path, stack: InProcessStack, tmp_path: Path
) -> None:
    """The executor launches the Node component as a command; its events land in the run,
    inside the component's own lifecycle, after the Python component it runs after."""
    ion_file = tmp_path / "ion.yaml"
    ion_file.write_text(RUN_ION_YAML)
    ion = stack.register(ion_file)
    run = stack.run_to_end(ion, timeout=240)
    assert run.state == executor_pb2.RUN_STATE_SUCCEEDED, run.error_message

    timeline = list(stack.recorder.list_events(ion, order="timeline"))
    # Only the Node component records predictions.digest; its producer is the Node process.
    (node_producer,) = {e.producer_id for e in timeline if e.type == "predictions.digest"}
    node_events = [e for e in timeline if e.producer_id == node_producer]
    assert [e.type for e in node_events] == [
        "component.started",
        "model.loaded",
        "stat",
        "stat",
        "predictions.digest",
        "log",
        "component.finished",
    ]
    assert all(
        (e.run, e.node, e.component, e.trace_id) == (run.name, "train", "score", run.trace_id)
        for e in node_events
    )
    assert [e.producer_sequence for e in node_events] == list(range(1, 8))
    digest = hashlib.sha256(
        json.dumps({"kind": "linear", "weights": WEIGHTS}, separators=(",", ":")).encode()
    ).hexdigest()
    assert [e.model.sha256 for e in node_events if e.HasField("model")] == [digest]

    def position(pred: Any) -> int:
        return next(i for i, e in enumerate(timeline) if pred(e))

    first_node = timeline.index(node_events[0])
    last_node = timeline.index(node_events[-1])
    python = [e for e in timeline if e.producer_id != node_producer]
    load_finished = position(
        lambda e: e in python and e.component == "load" and e.type == "component.finished"
    )
    score_started = position(
        lambda e: e in python and e.component == "score" and e.type == "component.started"
    )
    score_finished = position(
        lambda e: e in python and e.component == "score" and e.type == "component.finished"
    )
    assert load_finished < score_started < first_node <= last_node < score_finished


_TWO_FLUSHES = """
import { createInterface } from "node:readline";
import { Recorder } from "./src/index.js";
const recorder = new Recorder({ maxAttempts: 12, maxDelayMs: 1000 });
for (let i = 0; i < 5; i++) recorder.stat("first", i);
await recorder.flush();
console.log("flushed");
const lines = createInterface({ input: process.stdin });
for await (const _ of lines) break;
for (let i = 0; i < 5; i++) recorder.stat("second", i);
await recorder.close();
console.log(JSON.stringify({ ...recorder.stats, producer_id: recorder.producerId }));
"""


def test_node_client_rides_out_a_recorder_restart(
    node_modules: Path, config: Config, registry_server: Server
) -> None:
    """The recorder goes away between two flushes and comes back on the same port: the
    second batch is retried until it is stored, and nothing is stored twice."""
    from relive.recorder.server import create_server

    cfg = config.with_(registry_endpoint=f"127.0.0.1:{registry_server.port}")
    with grpc.insecure_channel(f"127.0.0.1:{registry_server.port}") as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).CreateIon(
            registry_pb2.CreateIonRequest(ion_id="polyglot", definition_yaml=ION_YAML), timeout=30
        )
    first, port = create_server(cfg)
    first.start()
    assert NODE is not None
    child = subprocess.Popen(
        [NODE, "--input-type=module", "-e", _TWO_FLUSHES],
        cwd=NODE_DIR,
        env=_node_env({"RELIVE_RECORDER_ENDPOINT": f"127.0.0.1:{port}", "RELIVE_ION": "polyglot"}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second: Server | None = None
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "flushed"
        first.stop(0.2)
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(1.5)  # the client is retrying UNAVAILABLE meanwhile
        second, _ = create_server(cfg.with_(port=port))
        second.start()
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["retries"] >= 1, "the recorder was away for the second flush"
        assert stats["sent"] == stats["stored"] == 10

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            timeline = list_timeline(recorder_pb2_grpc.RecorderServiceStub(channel))
        assert [(e.stat.name, e.stat.value) for e in timeline] == [
            *(("first", float(i)) for i in range(5)),
            *(("second", float(i)) for i in range(5)),
        ]
        assert [e.producer_sequence for e in timeline] == list(range(1, 11))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        first.stop(0.2)
        if second is not None:
            second.stop(0.5)
