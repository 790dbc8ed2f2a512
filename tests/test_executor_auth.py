# ruff: noqa: F811 - fixtures are imported from tests/executor_fixtures.py
"""The executor with RELIVE_AUTH and TLS on, over a real registry, recorder, executor and Ray.

alice (member) and carol (admin) work on project churn, bob (member) on project fraud. A run
belongs to its ION's project: for bob it does not exist, whatever he calls, and his calls
change nothing. The run's components act as the user who launched it, never with the
executor's service token.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from relive import errors as domain_errors
from relive.client.channel import connect_channel
from relive.core.config import Config
from relive.errors import ReliveError, from_rpc_error
from relive.executor.v1 import executor_pb2 as pb
from relive.executor.v1 import executor_pb2_grpc
from relive.recorder.v1 import recorder_pb2, recorder_pb2_grpc
from relive.registry.v1 import registry_pb2, registry_pb2_grpc
from tests.executor_fixtures import ray_session, start_stack  # noqa: F401

# A command component that reports which token it was handed, and reads the timeline with it.
WHOAMI = """\
import json, os
from relive.client.channel import connect_channel
from relive.recorder.v1 import recorder_pb2, recorder_pb2_grpc

token = os.environ.get("RELIVE_TOKEN", "")
print(json.dumps({"stat": "holds_service_token", "value": float(token == "tok-svc")}))
print(json.dumps({"stat": "holds_alice_token", "value": float(token == "tok-alice")}))
stub = recorder_pb2_grpc.RecorderServiceStub(
    connect_channel(os.environ["RELIVE_RECORDER_ENDPOINT"])
)
page = stub.ListEvents(recorder_pb2.ListEventsRequest(parent=os.environ["RELIVE_ION_NAME"]))
print(json.dumps({"stat": "reads_timeline", "value": float(len(page.events) > 0)}))
"""

ION = """\
name: {name}
nodes:
  train:
    pipeline:
      components:
        load: {{call: examples.patterns.steps:load, params: {{dataset: iris}}}}
        fit:
          call: examples.patterns.steps:fit
          after: [load]
          params: {{model: tree, max_depth: 3}}
        whoami: {{command: ["{python}", "{script}"], after: [fit]}}
      outputs: {{model: fit}}
  gate:
    policy: approval
    params: {{timeout_s: 300}}
  infer:
    pipeline:
      components:
        score: {{call: examples.patterns.steps:score, params: {{dataset: iris}}}}
edges:
  - {{from: train, to: gate, carries: model}}
  - {{from: gate, to: infer, carries: model}}
"""

NOT_FOUND = grpc.StatusCode.NOT_FOUND


def ion_yaml(name: str, script: Path) -> str:
    return ION.format(name=name, python=sys.executable, script=script)


@dataclass
class User:
    registry: registry_pb2_grpc.RegistryServiceStub
    recorder: recorder_pb2_grpc.RecorderServiceStub
    executor: executor_pb2_grpc.ExecutorServiceStub


@pytest.fixture
def deployment(
    auth_config: Config, self_signed: tuple[Path, Path], ray_session: object
) -> Iterator[dict[str, User]]:
    """alice, carol, bob and anonymous, each with stubs on every service. Every service runs
    with auth and TLS on; the services, and the run's components, reach each other trusting
    the test's self-signed certificate."""
    key, cert = self_signed
    servers, stack = start_stack(auth_config.with_(tls_cert=cert, tls_key=key, tls_ca=cert))
    executor = f"127.0.0.1:{stack.executor_server.port}"
    channels: list[grpc.Channel] = []

    def user(token: str | None) -> User:
        def channel(target: str | None) -> grpc.Channel:
            assert target
            ch = connect_channel(target, token=token or "", tls_ca=cert, environ={})
            channels.append(ch)
            return ch

        return User(
            registry_pb2_grpc.RegistryServiceStub(channel(stack.config.registry_endpoint)),
            recorder_pb2_grpc.RecorderServiceStub(channel(stack.config.recorder_endpoint)),
            executor_pb2_grpc.ExecutorServiceStub(channel(executor)),
        )

    users = {
        "alice": user("tok-alice"),
        "carol": user("tok-carol"),
        "bob": user("tok-bob"),
        "anonymous": user(None),
    }
    try:
        yield users
    finally:
        for ch in [*channels, *stack.channels]:
            ch.close()
        stack.recorder.close()
        for server in servers:
            server.stop(0.5)


def refused(call: Callable[[], Any]) -> ReliveError:
    """The error a call fails with, read as a ReliveError (streams are read to the end)."""
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return from_rpc_error(caught.value)


def wait_state(user: User, run: str, state: int, timeout: float = 180) -> pb.Run:
    deadline = time.monotonic() + timeout
    while True:
        got = user.executor.GetRun(pb.GetRunRequest(name=run))
        if got.state == state or got.is_terminal:
            return got
        assert time.monotonic() < deadline, f"{run} stayed {pb.RunState.Name(got.state)}"
        time.sleep(0.2)


def stats_of(user: User, run: str) -> dict[str, float]:
    page = user.recorder.ListEvents(
        recorder_pb2.ListEventsRequest(
            parent="ions/churn-a", filter=recorder_pb2.EventFilter(runs=[run]), page_size=1000
        )
    )
    return {e.stat.name: e.stat.value for e in page.events if e.type == "stat"}


def runs_of(user: User) -> list[bytes]:
    page = user.executor.ListRuns(pb.ListRunsRequest(parent="ions/churn-a"))
    return sorted(r.name.encode() + bytes([r.state]) for r in page.runs)


def test_a_run_is_not_found_by_another_project_and_acts_as_its_launcher(
    deployment: dict[str, User], tmp_path: Path
) -> None:
    alice, bob, carol = deployment["alice"], deployment["bob"], deployment["carol"]
    script = tmp_path / "whoami.py"
    script.write_text(WHOAMI)
    alice.registry.CreateIon(
        registry_pb2.CreateIonRequest(ion_id="churn-a", definition_yaml=ion_yaml("churn-a", script))
    )
    bob.registry.CreateIon(
        registry_pb2.CreateIonRequest(ion_id="fraud-b", definition_yaml=ion_yaml("fraud-b", script))
    )
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    run = alice.executor.LaunchRun(
        pb.LaunchRunRequest(parent="ions/churn-a", seed=7, request_id="r1")
    ).name
    waiting = wait_state(alice, run, pb.RUN_STATE_WAITING)
    assert waiting.state == pb.RUN_STATE_WAITING, waiting.error_message
    before = runs_of(alice)

    # bob, of project fraud: alice's ION and run do not exist, whatever he calls.
    cap = recorder_pb2.Capture()
    cap.start_time.FromDatetime(start)
    cap.end_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    capture = alice.recorder.CreateCapture(
        recorder_pb2.CreateCaptureRequest(parent="ions/churn-a", capture_id="c1", capture=cap)
    ).name
    calls: dict[str, tuple[Callable[[], Any], str]] = {
        "launch": (
            lambda: bob.executor.LaunchRun(pb.LaunchRunRequest(parent="ions/churn-a")),
            "parent",
        ),
        "launch again with alice's request id": (
            lambda: bob.executor.LaunchRun(
                pb.LaunchRunRequest(parent="ions/churn-a", request_id="r1")
            ),
            "parent",
        ),
        "get": (lambda: bob.executor.GetRun(pb.GetRunRequest(name=run)), "name"),
        "list": (
            lambda: bob.executor.ListRuns(pb.ListRunsRequest(parent="ions/churn-a")),
            "parent",
        ),
        "watch": (lambda: bob.executor.WatchRun(pb.WatchRunRequest(name=run)), "name"),
        "cancel": (lambda: bob.executor.CancelRun(pb.CancelRunRequest(name=run)), "name"),
        "approve": (
            lambda: bob.executor.SubmitApproval(
                pb.SubmitApprovalRequest(run=run, node="gate", approve=True)
            ),
            "run",
        ),
        "relaunch a run": (
            lambda: bob.executor.RelaunchRun(pb.RelaunchRunRequest(run=run)),
            "run",
        ),
        "relaunch a capture": (
            lambda: bob.executor.RelaunchRun(pb.RelaunchRunRequest(capture=capture)),
            "capture",
        ),
        "verify": (
            lambda: bob.executor.VerifyRun(pb.VerifyRunRequest(original=run, relaunch=run)),
            "original",
        ),
    }
    for what, (call, field) in calls.items():
        error = refused(call)
        assert error.code == NOT_FOUND, (what, error)
        assert error.field == field, (what, error.field)
    # ... and none of it changed anything: the run still waits, with no other run beside it.
    assert runs_of(alice) == before
    assert alice.executor.GetRun(pb.GetRunRequest(name=run)).state == pb.RUN_STATE_WAITING
    # bob's own runs are his to launch.
    mine = bob.executor.LaunchRun(pb.LaunchRunRequest(parent="ions/fraud-b")).name
    assert mine.startswith("ions/fraud-b/runs/")
    bob.executor.CancelRun(pb.CancelRunRequest(name=mine))
    # Without a token, nothing at all.
    anonymous = refused(lambda: deployment["anonymous"].executor.GetRun(pb.GetRunRequest(name=run)))
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED and anonymous.field == "authorization"

    # carol, the project's admin, sees the run; alice approves it and it finishes.
    assert carol.executor.GetRun(pb.GetRunRequest(name=run)).name == run
    alice.executor.SubmitApproval(pb.SubmitApprovalRequest(run=run, node="gate", approve=True))
    done = wait_state(alice, run, pb.RUN_STATE_SUCCEEDED)
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error_message

    # The components acted as alice: the command got her token, not the service's, and the
    # model they stored belongs to her project.
    stats = stats_of(alice, run)
    assert stats["holds_alice_token"] == 1.0 and stats["holds_service_token"] == 0.0
    assert stats["reads_timeline"] == 1.0
    train = next(n for n in done.nodes if n.node == "train")
    version = train.outputs["model"]
    assert alice.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=version)).name
    hidden = refused(
        lambda: bob.registry.GetModelVersion(registry_pb2.GetModelVersionRequest(name=version))
    )
    assert hidden.code == NOT_FOUND

    # alice relaunches her run and verifies it; bob cannot verify against it.
    again = alice.executor.RelaunchRun(pb.RelaunchRunRequest(run=run)).name
    relaunched = wait_state(alice, again, pb.RUN_STATE_SUCCEEDED)
    assert relaunched.state == pb.RUN_STATE_SUCCEEDED, relaunched.error_message
    verdict = alice.executor.VerifyRun(pb.VerifyRunRequest(original=run, relaunch=again))
    assert verdict.status == pb.VERIFICATION_STATUS_MATCH
    crossed = refused(
        lambda: bob.executor.VerifyRun(pb.VerifyRunRequest(original=mine, relaunch=again))
    )
    assert crossed.code == NOT_FOUND and crossed.field == "relaunch"


def test_the_executor_needs_a_service_token_when_auth_is_on(auth_config: Config) -> None:
    from relive.executor.server import create_server

    with pytest.raises(domain_errors.FailedPrecondition) as caught:
        create_server(
            auth_config.with_(
                service_token=None,
                registry_endpoint="127.0.0.1:1",
                recorder_endpoint="127.0.0.1:1",
            )
        )
    assert caught.value.field == "RELIVE_SERVICE_TOKEN"
