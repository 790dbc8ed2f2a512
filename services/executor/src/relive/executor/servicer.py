"""gRPC <-> domain: ExecutorService's requests and responses; no storage, no policy logic."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from relive.core import identity
from relive.executor.service import ExecutorService
from relive.executor.v1 import executor_pb2 as pb
from relive.executor.v1 import executor_pb2_grpc


def _user(context: grpc.ServicerContext) -> str:
    """Who decided: the authenticated user when auth is on, else the name the client gave."""
    who = identity.current()
    if who is not identity.LOCAL:
        return who.user
    md = dict(context.invocation_metadata() or ())
    return str(md.get("x-relive-user") or who.user)


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, service: ExecutorService) -> None:
        self.service = service

    def LaunchRun(self, request: pb.LaunchRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self.service.launch(
            request.parent,
            request.revision_id,
            dict(request.overrides),
            request.seed,
            request.request_id,
        )

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self.service.get(request.name)

    def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsResponse:
        runs, token = self.service.list(request.parent, request.page_size, request.page_token)
        return pb.ListRunsResponse(runs=runs, next_page_token=token)

    def CancelRun(self, request: pb.CancelRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self.service.cancel(request.name)

    def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Run]:
        yield from self.service.watch(request.name, context.is_active)

    def SubmitApproval(
        self, request: pb.SubmitApprovalRequest, context: grpc.ServicerContext
    ) -> pb.Run:
        return self.service.approve(
            request.run, request.node, request.approve, request.comment, _user(context)
        )

    def RelaunchRun(self, request: pb.RelaunchRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self.service.relaunch(
            request.run,
            request.capture,
            list(request.pipelines),
            request.allow_drift,
            request.request_id,
            request.code,
        )

    def VerifyRun(
        self, request: pb.VerifyRunRequest, context: grpc.ServicerContext
    ) -> pb.Verification:
        return self.service.verify(request.original, request.relaunch, request.tolerance)
