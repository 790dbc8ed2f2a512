"""A typed client of the executor: launch, runs, approvals, relaunch and verification.

Every unary call goes through ``relive.client.channel.call``: a deadline and the
``relive.errors`` exception tree; the channel retries UNAVAILABLE (but not approvals).
"""

from __future__ import annotations

import getpass
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from relive.client.channel import DEFAULT_TIMEOUT_S, call
from relive.errors import DeadlineExceeded, InvalidArgument, from_rpc_error
from relive.executor.v1 import executor_pb2 as pb
from relive.executor.v1 import executor_pb2_grpc

TERMINAL = {pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED}


def ion_name(ion: str) -> str:
    return ion if ion.startswith("ions/") else f"ions/{ion}"


def state_name(state: Any) -> str:
    return pb.RunState.Name(state).removeprefix("RUN_STATE_")


def status_name(status: Any) -> str:
    return pb.VerificationStatus.Name(status).removeprefix("VERIFICATION_STATUS_")


CODE_SOURCES = {"recorded": pb.CODE_SOURCE_RECORDED, "current": pb.CODE_SOURCE_CURRENT}


def code_source(code: str | pb.CodeSource.ValueType) -> pb.CodeSource.ValueType:
    """``"recorded"`` / ``"current"`` (or the enum itself) as a ``CodeSource``."""
    if isinstance(code, str):
        if code not in CODE_SOURCES:
            raise InvalidArgument(
                f"code must be one of {', '.join(CODE_SOURCES)}, not {code!r}", field="code"
            )
        return CODE_SOURCES[code]
    return code


class ExecutorClient:
    def __init__(
        self, channel: grpc.Channel, *, timeout: float = DEFAULT_TIMEOUT_S, user: str | None = None
    ) -> None:
        self._stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        self.timeout = timeout
        self.user = user or getpass.getuser()

    def launch(
        self,
        ion: str,
        *,
        revision: int = 0,
        overrides: Mapping[str, str] | None = None,
        seed: int = 0,
        request_id: str | None = None,
    ) -> pb.Run:
        req = pb.LaunchRunRequest(
            parent=ion_name(ion),
            revision_id=revision,
            overrides=dict(overrides or {}),
            seed=seed,
            request_id=request_id or uuid.uuid4().hex,
        )
        return call(self._stub.LaunchRun, req, timeout=self.timeout)

    def get(self, run: str) -> pb.Run:
        return call(self._stub.GetRun, pb.GetRunRequest(name=run), timeout=self.timeout)

    def list(self, ion: str, *, page_size: int = 0) -> Iterator[pb.Run]:
        token = ""
        while True:
            resp = call(
                self._stub.ListRuns,
                pb.ListRunsRequest(parent=ion_name(ion), page_size=page_size, page_token=token),
                timeout=self.timeout,
            )
            yield from resp.runs
            token = resp.next_page_token
            if not token:
                return

    def cancel(self, run: str) -> pb.Run:
        return call(self._stub.CancelRun, pb.CancelRunRequest(name=run), timeout=60.0)

    def watch(self, run: str, timeout: float = 3600.0) -> Iterator[pb.Run]:
        """The run now, then each change until it ends."""
        try:
            yield from self._stub.WatchRun(pb.WatchRunRequest(name=run), timeout=timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def wait(
        self, run: str, timeout: float = 600.0, on_change: Callable[[pb.Run], None] | None = None
    ) -> pb.Run:
        """Blocks until the run is terminal; raises DeadlineExceeded after ``timeout``."""
        deadline = time.monotonic() + timeout
        last = self.get(run)
        while not last.is_terminal:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(
                    f"run {run} is still {state_name(last.state)} after {timeout:g} s"
                )
            try:
                for r in self.watch(run, timeout=left):
                    last = r
                    if on_change:
                        on_change(r)
                    if r.is_terminal:
                        break
            except DeadlineExceeded:
                continue
            last = self.get(run)
        return last

    def approve(self, run: str, node: str, *, approve: bool = True, comment: str = "") -> pb.Run:
        req = pb.SubmitApprovalRequest(run=run, node=node, approve=approve, comment=comment)
        return call(
            lambda r, timeout: self._stub.SubmitApproval(
                r, timeout=timeout, metadata=(("x-relive-user", self.user),)
            ),
            req,
            timeout=self.timeout,
        )

    def relaunch(
        self,
        *,
        run: str = "",
        capture: str = "",
        pipelines: Sequence[str] = (),
        allow_drift: bool = False,
        request_id: str | None = None,
        code: str | pb.CodeSource.ValueType = "recorded",
    ) -> pb.Run:
        """``code``: ``"recorded"`` runs the snapshots the original ran (the default),
        ``"current"`` the code on the executor's code path now."""
        req = pb.RelaunchRunRequest(
            pipelines=list(pipelines),
            allow_drift=allow_drift,
            request_id=request_id or uuid.uuid4().hex,
            code=code_source(code),
        )
        if capture:
            req.capture = capture
        else:
            req.run = run
        return call(self._stub.RelaunchRun, req, timeout=120.0)

    def verify(self, original: str, relaunch: str, tolerance: float = 0.0) -> pb.Verification:
        return call(
            self._stub.VerifyRun,
            pb.VerifyRunRequest(original=original, relaunch=relaunch, tolerance=tolerance),
            timeout=120.0,
        )
