"""Hypothesis fuzzes every RPC of the registry, the recorder and the executor.

Requests are built from the proto descriptors: every field may be set, to random or hostile
values (junk and oversized strings, negative and huge numbers, timestamps out of range,
random bytes, unknown enum numbers, several members of a oneof, chunks before headers).
Resource names are drawn half the time from names that exist, so calls get past the first
check and into the logic behind it. Each call must answer with a status other than UNKNOWN
or INTERNAL; a call that was refused must leave every database of the deployment as it was
(count and hash of each collection); and every server must still be SERVING afterwards.
"""
# ruff: noqa: F811 - fixtures are imported from tests/executor_fixtures.py

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from google.protobuf import descriptor, message, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from pymongo import MongoClient

from relive.client.sink import EventSink
from relive.core.config import Config
from relive.core.serving import Server
from relive.executor.v1 import executor_pb2
from relive.recorder.v1 import recorder_pb2
from relive.registry.v1 import registry_pb2
from tests.executor_fixtures import (  # noqa: F401
    REPO_ROOT,
    InProcessStack,
    ray_session,
    start_stack,
    wait_for,
)

FD = descriptor.FieldDescriptor
SERVICES = {
    "registry": registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    "recorder": recorder_pb2.DESCRIPTOR.services_by_name["RecorderService"],
    "executor": executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"],
}
OTLP = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"]
# Codes that say "the server broke", never "your input was bad".
BROKEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
UNARY_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 2.0
EXAMPLES = 12

ION_YAML = """\
name: fuzz
retention_days: 3
nodes:
  train:
    pipeline:
      components:
        load: {call: examples.churn.steps:load, params: {dataset: breast_cancer, seed: 7}}
        fit: {call: examples.churn.steps:fit, after: [load], params: {C: 1.0}}
      outputs: {model: fit}
  gate:
    policy: approval
    params: {timeout_s: 1}
edges:
  - {from: train, to: gate, carries: model}
"""


# A code snapshot that exists (its tree hash need only be well formed here).
FUZZ_CODE = b"def fit(x):\n    return x\n"
FUZZ_TREE = hashlib.sha256(b"fuzz tree").hexdigest()
# A recorded input that exists.
FUZZ_INPUT = b"a live batch " * 20
FUZZ_INPUT_SHA = hashlib.sha256(FUZZ_INPUT).hexdigest()

# ----------------------------------------------------------------------------- the deployment


@dataclass
class Deployment:
    """A full stack on one database prefix, plus names that exist in it."""

    config: Config
    stack: InProcessStack
    servers: list[Server]
    targets: dict[str, str]
    mongo: MongoClient[dict[str, Any]]
    names: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def channel(self, service: str) -> grpc.Channel:
        return self._channels.setdefault(service, grpc.insecure_channel(self.targets[service]))

    @property
    def _channels(self) -> dict[str, grpc.Channel]:
        if not hasattr(self, "_channel_cache"):
            self._channel_cache: dict[str, grpc.Channel] = {}
        return self._channel_cache


def _seed(d: Deployment) -> None:
    """Makes sure the named resources exist; fuzzed deletes may have removed some."""
    reg, rec = d.stack.registry, d.stack.recorder
    try:
        reg.get_ion("fuzz")
    except Exception:
        path = d.config.data_dir / "fuzz.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ION_YAML)
        reg.register(path)
    now = dt.datetime.now(dt.UTC)
    with EventSink(d.targets["recorder"], "fuzz", producer_id="seed") as sink:
        for i in range(5):
            sink.log_stat("loss", 1.0 / (i + 1), step=i, node="train", run=d.names[0])
    try:
        rec.get_capture("ions/fuzz/captures/cap")
    except Exception:
        rec.create_capture("fuzz", "cap", now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    rec.create_recorded_input("fuzz", FUZZ_INPUT, kind="batch", media_type="application/x-npz")
    try:
        reg.get_model_version("models/fuzzmodel/versions/1")
    except Exception:
        reg.upload_model("fuzzmodel", b"model bytes " * 100, labels={"k": "v"})
    archive = d.config.data_dir / "fuzz-code.tar.gz"
    if not archive.exists():
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo("steps.py")
            info.size = len(FUZZ_CODE)
            tar.addfile(info, io.BytesIO(FUZZ_CODE))
    reg.create_code_snapshot(
        registry_pb2.CodeSnapshot(
            sha256=FUZZ_TREE,
            kind="files",
            files={"steps.py": hashlib.sha256(FUZZ_CODE).hexdigest()},
        ),
        archive,
    )


@pytest.fixture(scope="module")
def deployment(
    mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory, ray_session: object
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = Config(
        data_dir=tmp / "data",
        mongodb_uri=mongodb_uri,
        db_prefix=f"fz{uuid.uuid4().hex[:10]}",
        code_path=(str(REPO_ROOT),),
        grace_s=0.5,
        max_workers=32,
    )
    servers, stack = start_stack(config)
    exe, rec, reg = servers
    targets = {
        "registry": f"127.0.0.1:{reg.port}",
        "recorder": f"127.0.0.1:{rec.port}",
        "executor": f"127.0.0.1:{exe.port}",
    }
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, socketTimeoutMS=10_000)
    d = Deployment(stack.config, stack, servers, targets, mongo, names=["ions/fuzz/runs/none"])
    _seed(d)
    # One real run, so names of runs exist; the approval gate times out after 1 s.
    run = stack.executor.launch("fuzz", seed=7)
    done = stack.executor.wait(run.name, timeout=240)
    assert done.is_terminal
    d.names = [
        run.name,
        "ions/fuzz",
        "ions/fuzz/revisions/1",
        "ions/fuzz/revisions/latest",
        "ions/fuzz/captures/cap",
        "ions/fuzz/retentionPolicy",
        "ions/-",
        "ions/nope",
        "ions/fuzz/captures/nope",
        "ions/fuzz/runs/run-999-abcdef",
        "models/fuzzmodel",
        "models/fuzzmodel/versions/1",
        "models/fuzzmodel/versions/latest",
        "models/nope/versions/1",
        f"codeSnapshots/{FUZZ_TREE}",
        f"codeSnapshots/{'0' * 64}",
        f"ions/fuzz/inputs/{FUZZ_INPUT_SHA}",
        f"ions/fuzz/inputs/{'0' * 64}",
    ]
    page = stack.recorder.list_events_page("fuzz", page_size=1)
    d.tokens = [page.next_page_token]
    yield d
    for ch in d._channels.values():
        ch.close()
    for server in servers:
        server.stop(0.5)
    for ch in stack.channels:
        ch.close()
    stack.recorder.close()
    mongo.close()


GRIDFS_FILE_FIELDS = dict.fromkeys(
    ["filename", "length", "chunkSize", "uploadDate", "md5", "metadata"], 1
)


def snapshot(d: Deployment) -> dict[str, tuple[int, str]]:
    """Count and sha256 of every collection of the deployment's databases."""
    raw = CodecOptions(document_class=RawBSONDocument)
    out: dict[str, tuple[int, str]] = {}
    for db_name in d.mongo.list_database_names():
        if not db_name.startswith(d.config.db_prefix + "_"):
            continue
        db = d.mongo[db_name]
        for coll in sorted(db.list_collection_names()):
            projection = None
            if coll.endswith("_files"):
                # The embedded store lists GridFS "<bucket>.files" as "<bucket>_files", and
                # hangs on a find() of it without a projection.
                coll, projection = coll[: -len("_files")] + ".files", GRIDFS_FILE_FIELDS
            found: Any = db.get_collection(coll, codec_options=raw).find({}, projection)
            docs = sorted(bytes(doc.raw) for doc in found)
            digest = hashlib.sha256(b"".join(docs)).hexdigest()
            out[f"{db_name}.{coll}"] = (len(docs), digest)
    return out


def assert_serving(d: Deployment) -> None:
    for service, target in d.targets.items():
        with grpc.insecure_channel(target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


# ----------------------------------------------------------------------------- strategies

INT64 = st.one_of(
    st.sampled_from([0, 1, -1, 2, 7, 2**31 - 1, -(2**31), 2**53, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)
INT32 = st.one_of(
    st.sampled_from([0, 1, -1, 2, 10, 1000, 1001, 10_000, 10_001, 2**31 - 1, -(2**31)]),
    st.integers(-(2**31), 2**31 - 1),
)
HOSTILE = [
    "",
    " ",
    "-",
    "*",
    "..",
    "/",
    "//",
    "ions/",
    "ions//revisions/1",
    "ions/FUZZ",
    "ions/fuzz/",
    "ions/fuzz/runs/",
    "ions/fuzz/captures/../cap",
    "ions/fuzz\x00",
    "ions/\u00e9t\u00e9",
    "ions/fuzz/revisions/-1",
    "ions/fuzz/revisions/0",
    "ions/fuzz/revisions/99999999999999999999",
    "models/fuzzmodel/versions/-1",
    "models/fuzzmodel/versions/1e3",
    "$where",
    '{"$gt": ""}',
    "%s%n%x",
    "\ud7ff\U0010ffff",
    "a" * 64,
    "a" * 5000,
    "x" * 300_000,
]
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(HOSTILE))
KIND_TEXT = st.one_of(
    st.sampled_from(["stat", "run.launched", "node.finished", "model.swapped", "log", "x" * 200]),
    TEXT,
)
HEX = st.one_of(
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.text("0123456789abcdef", min_size=16, max_size=16),
    TEXT,
)
FLOAT = st.floats(allow_nan=True, allow_infinity=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
NAME_FIELDS = {
    "name",
    "parent",
    "ion",
    "run",
    "capture",
    "original",
    "relaunch",
    "model_version",
    "revision",
    "relaunch_of",
    "source_capture",
    "producing_run",
}


def _names(d: Deployment) -> st.SearchStrategy[str]:
    real = st.sampled_from(d.names)
    return st.one_of(real, real.map(lambda n: n + "x"), real.map(lambda n: n.upper()), TEXT)


def _string(d: Deployment, f: FD) -> st.SearchStrategy[str]:
    if f.name in NAME_FIELDS:
        return _names(d)
    if f.name == "page_token":
        real = st.sampled_from(d.tokens)
        return st.one_of(real, real.map(lambda t: t[:-3]), real.map(lambda t: t + "AA"), TEXT)
    if f.name in ("type", "kind"):
        return KIND_TEXT
    if f.name in ("trace_id", "span_id", "parent_span_id"):
        return HEX
    if f.name in ("sha256", "expected_sha256"):
        return st.one_of(
            st.just(FUZZ_INPUT_SHA), st.text("0123456789abcdef", min_size=64, max_size=64), TEXT
        )
    if f.name in ("ion_id", "capture_id"):
        return st.one_of(st.sampled_from(["fuzz", "cap", "new-one"]), TEXT)
    if f.name == "definition_yaml":
        return st.one_of(
            st.just(ION_YAML),
            st.just(ION_YAML.replace("fit]", "nope]")),
            st.just(ION_YAML.replace("from: train", "from: ghost")),
            st.just("name: fuzz\nnodes: {a: {pipeline: {components: {x: {call: nope:no}}}}}"),
            st.just("{{{{"),
            st.just("- 1\n- 2"),
            st.just("a: &a [*a]"),
            st.just(
                "a: &a [1, 2, 3, 4, 5, 6, 7, 8]\n"
                + "".join(
                    f"{k}: &{k} [{', '.join(['*' + p] * 8)}]\n"
                    for p, k in zip("abcdef", "bcdefg", strict=True)
                )
            ),
            st.just("[" * 200 + "]" * 200),
            TEXT,
        )
    return TEXT


def _scalar(d: Deployment, f: Any) -> st.SearchStrategy[Any]:
    t = f.type
    if t == FD.TYPE_STRING:
        return _string(d, f)
    if t == FD.TYPE_BYTES:
        return st.one_of(st.binary(max_size=256), st.just(b"\x1f\x8b" + b"\0" * 64))
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return INT64
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return INT32
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t == FD.TYPE_DOUBLE:
        return FLOAT
    if t == FD.TYPE_FLOAT:
        return st.floats(width=32)
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t == FD.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 1000))
    raise AssertionError(f"unhandled field type {t} of {f.full_name}")


def draw_message(
    data: st.DataObject, d: Deployment, desc: descriptor.Descriptor, depth: int = 0
) -> message.Message:
    """A message of type ``desc`` with a random subset of its fields set to random values."""
    msg = message_factory.GetMessageClass(desc)()
    full = desc.full_name
    if full == "google.protobuf.Struct":
        msg.update(data.draw(st.dictionaries(st.text(max_size=10), JSON, max_size=4)))  # type: ignore[attr-defined]
        return msg
    if full == "google.protobuf.Timestamp":
        msg.seconds = data.draw(st.one_of(INT64, st.integers(1_700_000_000, 1_900_000_000)))  # type: ignore[attr-defined]
        msg.nanos = data.draw(st.one_of(st.just(0), INT32))  # type: ignore[attr-defined]
        return msg
    if full == "google.protobuf.FieldMask":
        paths = st.sampled_from(["description", "name", "start_time", "owner", "*", "", "a.b"])
        msg.paths.extend(data.draw(st.lists(st.one_of(paths, TEXT), max_size=3)))  # type: ignore[attr-defined]
        return msg
    fields: list[Any] = list(desc.fields)
    for f in fields:
        if not data.draw(st.booleans()):
            continue
        if f.type == FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            key_f = f.message_type.fields_by_name["key"]
            val_f = f.message_type.fields_by_name["value"]
            n = data.draw(st.integers(0, 3))
            target = getattr(msg, f.name)
            for _ in range(n):
                key = data.draw(_scalar(d, key_f))
                if val_f.type == FD.TYPE_MESSAGE:
                    if depth < 3:
                        target[key].CopyFrom(draw_message(data, d, val_f.message_type, depth + 1))
                else:
                    target[key] = data.draw(_scalar(d, val_f))
            continue
        if f.type == FD.TYPE_MESSAGE:
            if depth >= 3:
                continue
            if f.is_repeated:
                n = data.draw(st.integers(0, 3))
                for _ in range(n):
                    getattr(msg, f.name).add().CopyFrom(
                        draw_message(data, d, f.message_type, depth + 1)
                    )
            else:
                getattr(msg, f.name).CopyFrom(draw_message(data, d, f.message_type, depth + 1))
            continue
        if f.is_repeated:
            getattr(msg, f.name).extend(data.draw(st.lists(_scalar(d, f), max_size=3)))
        else:
            setattr(msg, f.name, data.draw(_scalar(d, f)))
    return msg


# ----------------------------------------------------------------------------- calling


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    replies: int
    last: bytes = b""


def _serialize(msg: message.Message) -> bytes:
    return msg.SerializeToString()


def invoke(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, requests: list[message.Message]
) -> Outcome:
    """Calls ``method`` with raw-bytes responses, reading at most 20 streamed replies."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    ser = _serialize
    ident = lambda b: b  # noqa: E731 - responses stay bytes; their content is not under test
    replies = 0
    try:
        if not method.client_streaming and not method.server_streaming:
            last = channel.unary_unary(path, ser, ident)(requests[0], timeout=UNARY_TIMEOUT_S)
            return Outcome(grpc.StatusCode.OK, "", 1, last)
        elif method.client_streaming and not method.server_streaming:
            channel.stream_unary(path, ser, ident)(iter(requests), timeout=UNARY_TIMEOUT_S)
            replies = 1
        else:
            if method.client_streaming:
                call = channel.stream_stream(path, ser, ident)(
                    iter(requests), timeout=STREAM_TIMEOUT_S
                )
            else:
                call = channel.unary_stream(path, ser, ident)(requests[0], timeout=STREAM_TIMEOUT_S)
            try:
                for _ in call:
                    replies += 1
                    if replies >= 20:
                        call.cancel()
                        return Outcome(grpc.StatusCode.CANCELLED, "read enough", replies)
            finally:
                call.cancel()
        return Outcome(grpc.StatusCode.OK, "", replies)
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details() or "", replies)


def check(
    d: Deployment, service: str, method: descriptor.MethodDescriptor, requests: list[Any]
) -> None:
    before = snapshot(d)
    outcome = invoke(d.channel(service), method, requests)
    assert outcome.code not in BROKEN, (
        f"{method.name} answered {outcome.code.name}: {outcome.details!r}\n"
        f"requests: {[str(r)[:2000] for r in requests]}"
    )
    if not method.client_streaming and not method.server_streaming:
        assert outcome.code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{method.name} hung"
    refused = outcome.code not in (
        grpc.StatusCode.OK,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    if method.name == "AppendEvents" and outcome.code == grpc.StatusCode.OK:
        # Every event rejected or a duplicate: a batch that stored nothing changes nothing.
        answer = recorder_pb2.AppendEventsResponse.FromString(outcome.last)
        refused = answer.stored_count == 0
    if refused:
        after = snapshot(d)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        assert not changed, (
            f"{method.name} was refused ({outcome.code.name}: {outcome.details!r}) "
            f"but changed {sorted(changed)}\nrequests: {[str(r)[:2000] for r in requests]}"
        )


def _requests(
    data: st.DataObject, d: Deployment, method: descriptor.MethodDescriptor
) -> list[message.Message]:
    if method.client_streaming:
        n = data.draw(st.integers(0, 4), label="messages")
        return [draw_message(data, d, method.input_type) for _ in range(n)]
    return [draw_message(data, d, method.input_type)]


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # No shrinking: each example costs real calls; the failing one is reported as drawn.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)

# The executor methods that would start real runs get their own, validation-failing inputs.
LAUNCHING = {"LaunchRun", "RelaunchRun"}
METHODS = [
    pytest.param(service, m.name, id=f"{service}.{m.name}")
    for service, desc in SERVICES.items()
    for m in desc.methods
    if not (service == "executor" and m.name in LAUNCHING)
]


@pytest.mark.parametrize(("service", "name"), METHODS)
def test_fuzz_rpc(deployment: Deployment, service: str, name: str) -> None:
    """Random and malformed fields: never UNKNOWN or INTERNAL, and refusals change nothing."""
    _seed(deployment)
    method = SERVICES[service].methods_by_name[name]

    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        check(deployment, service, method, _requests(data, deployment, method))

    fuzz()
    assert_serving(deployment)


def _bad_launch(data: st.DataObject, d: Deployment) -> executor_pb2.LaunchRunRequest:
    """LaunchRun requests that fail validation: a bad parent, revision or override."""
    req = executor_pb2.LaunchRunRequest(
        parent=data.draw(st.one_of(st.just("ions/fuzz"), _names(d))),
        seed=data.draw(INT64),
        request_id=data.draw(st.one_of(st.just(""), TEXT)),
    )
    bad = data.draw(st.sampled_from(["revision", "override", "parent"]))
    if bad == "revision":
        req.revision_id = data.draw(st.one_of(st.integers(-(2**63), -1), st.integers(2, 2**63 - 1)))
    elif bad == "override":
        key = data.draw(
            st.one_of(
                st.sampled_from(
                    ["train", "train.load", "ghost.x.y", "train.load.nope", "gate.nope", "."]
                ),
                TEXT,
            )
        )
        req.overrides[key] = data.draw(TEXT)
    else:
        req.parent = data.draw(
            st.one_of(st.sampled_from(["ions/nope", "ions/", "fuzz", "ions/-"]), TEXT)
        )
    return req


def test_fuzz_launch_run_refusals(deployment: Deployment) -> None:
    method = SERVICES["executor"].methods_by_name["LaunchRun"]

    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        req = _bad_launch(data, deployment)
        if req.parent == "ions/fuzz" and not req.overrides and req.revision_id in (0, 1):
            req.revision_id = 5  # would launch: make sure it cannot
        check(deployment, "executor", method, [req])

    fuzz()
    assert_serving(deployment)


def test_fuzz_relaunch_run_refusals(deployment: Deployment) -> None:
    method = SERVICES["executor"].methods_by_name["RelaunchRun"]
    real_run = deployment.names[0]

    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        req = executor_pb2.RelaunchRunRequest(
            pipelines=data.draw(st.lists(TEXT, max_size=3)),
            allow_drift=data.draw(st.booleans()),
            request_id=data.draw(st.one_of(st.just(""), TEXT)),
        )
        source = data.draw(st.sampled_from(["run", "capture", "none"]))
        if source != "none":
            value = data.draw(_names(deployment).filter(lambda n: n != real_run))
            setattr(req, source, value)
        if source == "capture" and req.capture == "ions/fuzz/captures/cap" and not req.pipelines:
            req.pipelines.append("ghost")  # a real capture: a pipeline that does not exist
        check(deployment, "executor", method, [req])

    fuzz()
    assert_serving(deployment)


def test_valid_but_odd_launches_are_answered_and_end(deployment: Deployment) -> None:
    """A handful of launches that pass validation with odd values; each run ends."""
    ex = deployment.stack.executor
    odd = [
        executor_pb2.LaunchRunRequest(parent="ions/fuzz", seed=-1, request_id="\u00e9" * 300),
        executor_pb2.LaunchRunRequest(parent="ions/fuzz", seed=2**63 - 1, revision_id=1),
        executor_pb2.LaunchRunRequest(
            parent="ions/fuzz", overrides={"train.fit.C": "1e308", "gate.timeout_s": "0"}
        ),
        executor_pb2.LaunchRunRequest(parent="ions/fuzz", overrides={"train.load.seed": "[1, 2]"}),
    ]
    method = SERVICES["executor"].methods_by_name["LaunchRun"]
    ch = deployment.channel("executor")
    launched: list[str] = []
    for req in odd:
        outcome = invoke(ch, method, [req])
        assert outcome.code not in BROKEN, (req, outcome)
        if outcome.code == grpc.StatusCode.OK:
            runs = list(ex.list("fuzz"))
            launched.append(runs[0].name)
    relaunch = SERVICES["executor"].methods_by_name["RelaunchRun"]
    outcome = invoke(
        ch,
        relaunch,
        [executor_pb2.RelaunchRunRequest(run=deployment.names[0], pipelines=["train", "train"])],
    )
    assert outcome.code not in BROKEN, outcome
    for run in ex.list("fuzz"):
        # A gate with timeout_s 0 waits for a person: reject it, so the run ends.
        settled = wait_for(
            lambda name=run.name: (
                (r := ex.get(name)).is_terminal or r.state == executor_pb2.RUN_STATE_WAITING
            ),
            240,
        )
        del settled
        if not ex.get(run.name).is_terminal:
            with contextlib.suppress(Exception):  # it may have ended meanwhile
                ex.approve(run.name, "gate", approve=False, comment="fuzz")
        done = ex.wait(run.name, timeout=240)
        assert done.is_terminal
        if done.state == executor_pb2.RUN_STATE_FAILED:
            assert done.error_message
    assert len(launched) >= 1
    assert_serving(deployment)


def test_fuzz_otlp_export(deployment: Deployment) -> None:
    """The recorder's OpenTelemetry TraceService, fuzzed like the rest."""
    method = OTLP.methods_by_name["Export"]
    probe = invoke(
        deployment.channel("recorder"), method, [trace_service_pb2.ExportTraceServiceRequest()]
    )
    assert probe.code != grpc.StatusCode.UNIMPLEMENTED, "TraceService is not served"

    @FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        check(deployment, "recorder", method, _requests(data, deployment, method))

    fuzz()
    assert_serving(deployment)


# ----------------------------------------------------------------------------- malformed bytes


def _malformed(data: st.DataObject) -> bytes:
    """Bytes that are not a valid protobuf message of any request type."""
    return data.draw(
        st.one_of(
            st.binary(min_size=1, max_size=64),
            st.just(b"\x0a\x03\xff\xfe\xfd"),  # field 1, a string of invalid UTF-8
            st.just(b"\x0a\xff\xff\xff\xff\x0f"),  # a length beyond the message
            st.just(b"\x08"),  # a varint cut short
            st.just(b"\x0f"),  # wire type 7
        )
    )


ALL_METHODS = [
    pytest.param(service, m.name, id=f"{service}.{m.name}")
    for service, desc in SERVICES.items()
    for m in desc.methods
]


@pytest.mark.parametrize(("service", "name"), ALL_METHODS)
def test_malformed_bytes(deployment: Deployment, service: str, name: str) -> None:
    """A request that does not parse is INVALID_ARGUMENT (a Node client with a stale or buggy
    encoder can send one), not grpc's INTERNAL; and it changes nothing."""
    method = SERVICES[service].methods_by_name[name]
    ch = deployment.channel(service)
    path = f"/{method.containing_service.full_name}/{name}"
    ident = lambda b: b  # noqa: E731

    @settings(FUZZ, max_examples=4)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        payload = _malformed(data)
        try:
            message_factory.GetMessageClass(method.input_type).FromString(payload)
        except message.DecodeError:
            pass
        else:
            return  # happens to parse: covered by test_fuzz_rpc
        before = snapshot(deployment)
        code = grpc.StatusCode.OK
        try:
            if method.client_streaming and method.server_streaming:
                list(
                    ch.stream_stream(path, ident, ident)(iter([payload]), timeout=STREAM_TIMEOUT_S)
                )
            elif method.client_streaming:
                ch.stream_unary(path, ident, ident)(iter([payload]), timeout=UNARY_TIMEOUT_S)
            elif method.server_streaming:
                list(ch.unary_stream(path, ident, ident)(payload, timeout=STREAM_TIMEOUT_S))
            else:
                ch.unary_unary(path, ident, ident)(payload, timeout=UNARY_TIMEOUT_S)
        except grpc.RpcError as e:
            code = e.code()
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, payload, code)
        assert snapshot(deployment) == before

    fuzz()
    assert_serving(deployment)


def test_fuzz_left_every_server_serving(deployment: Deployment) -> None:
    """The last word: after everything above, each service still answers a real call."""
    assert_serving(deployment)
    assert deployment.stack.registry.get_ion("fuzz").name == "ions/fuzz"
    assert list(deployment.stack.recorder.list_events("fuzz", page_size=5))
    assert list(deployment.stack.executor.list("fuzz"))
