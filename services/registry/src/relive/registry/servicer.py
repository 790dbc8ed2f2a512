"""proto <-> domain for the registry; all the logic lives in RegistryService."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from relive import policies
from relive.errors import InvalidArgument
from relive.registry.definition import resources_to_pb
from relive.registry.model import (
    CodeRef,
    CodeSnapshot,
    DatasetRef,
    Ion,
    Lineage,
    ModelVersion,
    Revision,
)
from relive.registry.service import RegistryService
from relive.registry.snapshots import CodeSnapshotService
from relive.registry.v1 import registry_pb2 as pb
from relive.registry.v1 import registry_pb2_grpc


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def ion_to_pb(ion: Ion) -> pb.Ion:
    return pb.Ion(
        name=ion.name,
        latest_revision=ion.latest_revision,
        retention_days=ion.retention_days,
        project=ion.project,
        create_time=_ts(ion.create_time),
        update_time=_ts(ion.update_time),
    )


def definition_to_pb(d: dict[str, Any]) -> pb.IonDefinition:
    out = pb.IonDefinition(name=d["name"], retention_days=d["retention_days"])
    for node_id, node in d["nodes"].items():
        n = out.nodes[node_id]
        if "pipeline" in node:
            n.pipeline.SetInParent()
            for cid, c in node["pipeline"]["components"].items():
                pc = n.pipeline.components[cid]
                pc.call = c["call"]
                pc.command.extend(c["command"])
                pc.after.extend(c["after"])
                pc.params.update(c["params"])
                pc.image = c["image"]
                if "resources" in c:
                    resources_to_pb(c["resources"], pc.resources)
            n.pipeline.outputs.update(node["pipeline"]["outputs"])
            if "schedule" in node:
                n.schedule.SetInParent()
                s = node["schedule"]
                n.schedule.every_launches = s.get("every_launches", 0)
                n.schedule.every_seconds = s.get("every_seconds", 0.0)
                n.schedule.every_batches = s.get("every_batches", 0)
            if "streaming" in node:
                st = node["streaming"]
                n.streaming.CopyFrom(
                    pb.Streaming(
                        batches=st["batches"], batch_size=st["batch_size"], score=st["score"]
                    )
                )
        else:
            policy = node["policy"]
            kind = policies.by_name(policy["type"])
            assert kind is not None, policy["type"]  # the definition was validated
            n.policy.type = kind.enum
            n.policy.params.update(policy["params"])
    out.edges.extend(
        pb.Edge(from_node=e["from"], to_node=e["to"], carries=e["carries"]) for e in d["edges"]
    )
    return out


def code_ref_to_pb(ref: CodeRef) -> pb.CodeRef:
    return pb.CodeRef(
        module=ref.module,
        repo=ref.repo,
        path=ref.path,
        commit=ref.commit,
        dirty=ref.dirty,
        tree_sha256=ref.tree_sha256,
        snapshot=ref.snapshot,
        root=ref.root,
        file_sha256=ref.file_sha256,
    )


def code_refs_from_pb(refs: Any) -> list[CodeRef]:
    return [
        CodeRef(
            module=r.module,
            repo=r.repo,
            path=r.path,
            commit=r.commit,
            dirty=r.dirty,
            tree_sha256=r.tree_sha256,
            snapshot=r.snapshot,
            root=r.root,
            file_sha256=r.file_sha256,
        )
        for r in refs
    ]


def code_snapshot_to_pb(snap: CodeSnapshot) -> pb.CodeSnapshot:
    out = pb.CodeSnapshot(
        name=snap.name,
        sha256=snap.sha256,
        kind=snap.kind,
        archive_bytes=snap.archive_bytes,
        archive_sha256=snap.archive_sha256,
        file_count=snap.file_count,
        tree_bytes=snap.tree_bytes,
        files=snap.files,
        repo=snap.repo,
        commit=snap.commit,
        dirty=snap.dirty,
        repo_path=snap.repo_path,
    )
    if snap.create_time is not None:
        out.create_time.CopyFrom(_ts(snap.create_time))
    return out


def code_snapshot_from_pb(header: pb.CodeSnapshot) -> CodeSnapshot:
    """An upload's header; its output-only fields are left out."""
    return CodeSnapshot(
        sha256=header.sha256,
        kind=header.kind,
        archive_sha256=header.archive_sha256,
        file_count=header.file_count,
        tree_bytes=header.tree_bytes,
        files=dict(header.files),
        repo=header.repo,
        commit=header.commit,
        dirty=header.dirty,
        repo_path=header.repo_path,
    )


def revision_to_pb(rev: Revision) -> pb.Revision:
    return pb.Revision(
        name=rev.name,
        revision_id=rev.revision_id,
        definition=definition_to_pb(rev.definition),
        source_yaml=rev.source_yaml,
        source_path=rev.source_path,
        code_refs=[code_ref_to_pb(r) for r in rev.code_refs],
        definition_sha256=rev.definition_sha256,
        create_time=_ts(rev.create_time),
    )


def model_version_to_pb(mv: ModelVersion) -> pb.ModelVersion:
    return pb.ModelVersion(
        name=mv.name,
        version_id=mv.version_id,
        sha256=mv.sha256,
        size_bytes=mv.size_bytes,
        producing_run=mv.lineage.producing_run,
        producing_node=mv.lineage.producing_node,
        dataset_refs=[
            pb.DatasetRef(uri=d.uri, sha256=d.sha256, size_bytes=d.size_bytes)
            for d in mv.lineage.dataset_refs
        ],
        labels=mv.lineage.labels,
        create_time=_ts(mv.create_time),
    )


def lineage_from_pb(mv: pb.ModelVersion) -> Lineage:
    return Lineage(
        producing_run=mv.producing_run,
        producing_node=mv.producing_node,
        dataset_refs=[
            DatasetRef(uri=d.uri, sha256=d.sha256, size_bytes=d.size_bytes) for d in mv.dataset_refs
        ],
        labels=dict(mv.labels),
    )


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, service: RegistryService, snapshots: CodeSnapshotService) -> None:
        self.service = service
        self.snapshots = snapshots

    def CreateIon(self, request: pb.CreateIonRequest, context: grpc.ServicerContext) -> pb.Ion:
        ion = self.service.create_ion(
            request.ion_id,
            request.definition_yaml,
            source_path=request.source_path,
            code_refs=code_refs_from_pb(request.code_refs),
            request_id=request.request_id,
            restore=request.restore,
        )
        return ion_to_pb(ion)

    def GetIon(self, request: pb.GetIonRequest, context: grpc.ServicerContext) -> pb.Ion:
        return ion_to_pb(self.service.get_ion(request.name))

    def ListIons(
        self, request: pb.ListIonsRequest, context: grpc.ServicerContext
    ) -> pb.ListIonsResponse:
        page = self.service.list_ions(request.page_size, request.page_token)
        return pb.ListIonsResponse(
            ions=[ion_to_pb(i) for i in page.items], next_page_token=page.next_page_token
        )

    def DeleteIon(
        self, request: pb.DeleteIonRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self.service.delete_ion(request.name)
        return empty_pb2.Empty()

    def CreateRevision(
        self, request: pb.CreateRevisionRequest, context: grpc.ServicerContext
    ) -> pb.Revision:
        rev = self.service.create_revision(
            request.parent,
            request.definition_yaml,
            source_path=request.source_path,
            code_refs=code_refs_from_pb(request.code_refs),
            request_id=request.request_id,
            restore=request.restore,
        )
        return revision_to_pb(rev)

    def GetRevision(
        self, request: pb.GetRevisionRequest, context: grpc.ServicerContext
    ) -> pb.Revision:
        return revision_to_pb(self.service.get_revision(request.name))

    def ListRevisions(
        self, request: pb.ListRevisionsRequest, context: grpc.ServicerContext
    ) -> pb.ListRevisionsResponse:
        page = self.service.list_revisions(request.parent, request.page_size, request.page_token)
        return pb.ListRevisionsResponse(
            revisions=[revision_to_pb(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    def CreateModelVersion(
        self,
        request_iterator: Iterator[pb.CreateModelVersionRequest],
        context: grpc.ServicerContext,
    ) -> pb.ModelVersion:
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("the first message must be the header", field="header")
        header = first.header

        def chunks() -> Iterator[bytes]:
            for message in request_iterator:
                if message.HasField("header"):
                    raise InvalidArgument("the header was sent twice", field="header")
                yield message.chunk

        mv = self.service.create_model_version(
            header.parent,
            lineage_from_pb(header.model_version),
            chunks(),
            expected_sha256=header.expected_sha256,
            request_id=header.request_id,
            restore_version_id=header.restore_version_id,
        )
        return model_version_to_pb(mv)

    def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.ModelVersion:
        return model_version_to_pb(self.service.get_model_version(request.name))

    def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelVersionsResponse:
        page = self.service.list_model_versions(
            request.parent, request.page_size, request.page_token
        )
        return pb.ListModelVersionsResponse(
            model_versions=[model_version_to_pb(m) for m in page.items],
            next_page_token=page.next_page_token,
        )

    def DownloadModelVersion(
        self, request: pb.DownloadModelVersionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadModelVersionResponse]:
        mv, chunks = self.service.download_model_version(request.name, request.chunk_size)
        yield pb.DownloadModelVersionResponse(model_version=model_version_to_pb(mv))
        for chunk in chunks:
            yield pb.DownloadModelVersionResponse(chunk=chunk)

    def CreateCodeSnapshot(
        self,
        request_iterator: Iterator[pb.CreateCodeSnapshotRequest],
        context: grpc.ServicerContext,
    ) -> pb.CodeSnapshot:
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("the first message must be the header", field="header")

        def chunks() -> Iterator[bytes]:
            for message in request_iterator:
                if message.HasField("header"):
                    raise InvalidArgument("the header was sent twice", field="header")
                yield message.chunk

        snap = self.snapshots.create(
            code_snapshot_from_pb(first.header), chunks(), name=first.header.name
        )
        return code_snapshot_to_pb(snap)

    def GetCodeSnapshot(
        self, request: pb.GetCodeSnapshotRequest, context: grpc.ServicerContext
    ) -> pb.CodeSnapshot:
        return code_snapshot_to_pb(self.snapshots.get(request.name))

    def DownloadCodeSnapshot(
        self, request: pb.DownloadCodeSnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadCodeSnapshotResponse]:
        snap, chunks = self.snapshots.download(request.name)
        yield pb.DownloadCodeSnapshotResponse(code_snapshot=code_snapshot_to_pb(snap))
        for chunk in chunks:
            yield pb.DownloadCodeSnapshotResponse(chunk=chunk)
