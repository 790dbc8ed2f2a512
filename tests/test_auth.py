"""Authentication and authorization with RELIVE_AUTH on, over real registry and recorder servers.

alice (member) and carol (admin) work on project churn, bob (member) on project fraud; the
recorder calls the registry with a service token. Every refused call is checked for its status
code and for leaving the stored data as it was.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from test_recorder_support import ION_YAML, T0, event

from relive import errors as domain_errors
from relive.client.channel import connect_channel
from relive.core import identity
from relive.core.config import Config
from relive.core.serving import Server
from relive.recorder.v1 import recorder_pb2, recorder_pb2_grpc
from relive.registry.v1 import registry_pb2, registry_pb2_grpc

NOT_FOUND = grpc.StatusCode.NOT_FOUND


@dataclass
class User:
    """One caller's stubs on both services."""

    registry: registry_pb2_grpc.RegistryServiceStub
    recorder: recorder_pb2_grpc.RecorderServiceStub
    otlp: trace_service_pb2_grpc.TraceServiceStub


@dataclass
class Deployment:
    registry: Server
    recorder: Server
    users: dict[str, User]

    def __getattr__(self, name: str) -> User:
        try:
            return self.users[name]
        except KeyError:
            raise AttributeError(name) from None


def _user(
    registry: str,
    recorder: str,
    token: str | None,
    stack: list[grpc.Channel],
    tls_ca: Path | None = None,
) -> User:
    def channel(target: str) -> grpc.Channel:
        ch = connect_channel(target, token=token or "", tls_ca=tls_ca, environ={})
        stack.append(ch)
        return ch

    rec = channel(recorder)
    return User(
        registry_pb2_grpc.RegistryServiceStub(channel(registry)),
        recorder_pb2_grpc.RecorderServiceStub(rec),
        trace_service_pb2_grpc.TraceServiceStub(rec),
    )


@pytest.fixture
def deployment(auth_config: Config) -> Iterator[Deployment]:
    from relive.recorder.server import create_server as create_recorder
    from relive.registry.server import create_server as create_registry

    registry, registry_port = create_registry(auth_config)
    registry.start()
    recorder, recorder_port = create_recorder(
        auth_config.with_(registry_endpoint=f"127.0.0.1:{registry_port}")
    )
    recorder.start()
    channels: list[grpc.Channel] = []
    reg, rec = f"127.0.0.1:{registry_port}", f"127.0.0.1:{recorder_port}"
    users = {
        name: _user(reg, rec, token, channels)
        for name, token in {
            "alice": "tok-alice",
            "carol": "tok-carol",
            "bob": "tok-bob",
            "svc": "tok-svc",
            "anonymous": None,
            "forger": "tok-nobody",
        }.items()
    }
    try:
        yield Deployment(registry, recorder, users)
    finally:
        for ch in channels:
            ch.close()
        recorder.stop(0.5)
        registry.stop(0.5)


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    """The error a call fails with (streams are read to the end)."""
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return caught.value


def code(call: Callable[[], Any]) -> grpc.StatusCode:
    return refused(call).code()


def create_ion(user: User, ion: str) -> registry_pb2.Ion:
    return user.registry.CreateIon(
        registry_pb2.CreateIonRequest(ion_id=ion, definition_yaml=ION_YAML.format(ion=ion, days=7))
    )


def capture(user: User, ion: str, capture_id: str, description: str = "") -> recorder_pb2.Capture:
    cap = recorder_pb2.Capture(description=description)
    cap.start_time.FromMilliseconds(T0)
    cap.end_time.FromMilliseconds(T0 + 1000)
    return user.recorder.CreateCapture(
        recorder_pb2.CreateCaptureRequest(parent=f"ions/{ion}", capture_id=capture_id, capture=cap)
    )


def events_of(user: User, ion: str) -> list[bytes]:
    page = user.recorder.ListEvents(recorder_pb2.ListEventsRequest(parent=f"ions/{ion}"))
    assert not page.next_page_token
    return [e.SerializeToString(deterministic=True) for e in page.events]


def captures_of(user: User, parent: str = "ions/-") -> list[tuple[str, str, str]]:
    page = user.recorder.ListCaptures(recorder_pb2.ListCapturesRequest(parent=parent))
    return sorted((c.name, c.owner, c.description) for c in page.captures)


@pytest.fixture
def churn(deployment: Deployment) -> Deployment:
    """alice's ION with five events, a capture of alice's and one of carol's; bob's ION."""
    create_ion(deployment.alice, "churn-a")
    deployment.alice.recorder.AppendEvents(
        recorder_pb2.AppendEventsRequest(
            parent="ions/churn-a", events=[event(T0 + 10 * i) for i in range(5)]
        )
    )
    capture(deployment.alice, "churn-a", "alice-cap", "alice's")
    capture(deployment.carol, "churn-a", "carol-cap", "carol's")
    create_ion(deployment.bob, "fraud-b")
    return deployment


def snapshot(d: Deployment) -> dict[str, Any]:
    """What alice's project holds, read as alice (and carol, its admin)."""
    a = d.alice
    return {
        "ions": a.registry.ListIons(registry_pb2.ListIonsRequest()).SerializeToString(),
        "revisions": a.registry.ListRevisions(
            registry_pb2.ListRevisionsRequest(parent="ions/churn-a")
        ).SerializeToString(),
        "events": events_of(a, "churn-a"),
        "captures": captures_of(a),
        "retention": a.recorder.GetRetentionPolicy(
            recorder_pb2.GetRetentionPolicyRequest(name="ions/churn-a/retentionPolicy")
        ).retention_days,
    }


# ---- authentication ------------------------------------------------------------------------


def _calls_of(who: User) -> dict[str, Callable[[], Any]]:
    return {
        "list ions": lambda: who.registry.ListIons(registry_pb2.ListIonsRequest()),
        "create ion": lambda: create_ion(who, "sneaky"),
        "list captures": lambda: captures_of(who),
        "append": lambda: who.recorder.AppendEvents(
            recorder_pb2.AppendEventsRequest(parent="ions/churn-a", events=[event(T0 + 1)])
        ),
        "delete capture": lambda: who.recorder.DeleteCapture(
            recorder_pb2.DeleteCaptureRequest(name="ions/churn-a/captures/alice-cap")
        ),
    }


def test_calls_without_a_valid_token_are_unauthenticated(churn: Deployment) -> None:
    before = snapshot(churn)
    for who in (churn.anonymous, churn.forger):
        calls = _calls_of(who)
        for what, call in calls.items():
            assert code(call) == grpc.StatusCode.UNAUTHENTICATED, what
    assert snapshot(churn) == before
    assert [i.name for i in churn.svc.registry.ListIons(registry_pb2.ListIonsRequest()).ions] == [
        "ions/churn-a",
        "ions/fraud-b",
    ]


def test_tokens_file_names_known_roles_and_project_ids(auth_config: Config, tmp_path: Path) -> None:
    assert auth_config.auth_tokens_file is not None
    tokens = identity.load_tokens(auth_config.auth_tokens_file)
    assert tokens["tok-svc"].is_service and tokens["tok-svc"].sees("fraud")
    assert tokens["tok-carol"].is_admin and not tokens["tok-carol"].sees("fraud")
    assert tokens["tok-alice"].token == "tok-alice", "an identity knows the token it came from"
    path = tmp_path / "bad-tokens.yaml"
    path.write_text("tokens:\n  t: {user: eve, project: churn, role: root}\n")
    with pytest.raises(domain_errors.FailedPrecondition, match="role 'root'"):
        identity.load_tokens(path)
    path.write_text("tokens:\n  t: {user: eve, project: 'Churn:X'}\n")
    with pytest.raises(domain_errors.FailedPrecondition, match="not an id"):
        identity.load_tokens(path)


# ---- projects ------------------------------------------------------------------------------


def test_another_projects_ion_is_not_found_in_the_registry(churn: Deployment) -> None:
    bob = churn.bob.registry
    before = snapshot(churn)

    hidden = refused(lambda: bob.GetIon(registry_pb2.GetIonRequest(name="ions/churn-a")))
    missing = refused(lambda: bob.GetIon(registry_pb2.GetIonRequest(name="ions/nothing")))
    assert hidden.code() == missing.code() == NOT_FOUND
    # The same answer as for an ION that does not exist: nothing tells them apart.
    assert str(hidden.details()).replace("churn-a", "X") == str(missing.details()).replace(
        "nothing", "X"
    )

    assert [i.name for i in bob.ListIons(registry_pb2.ListIonsRequest()).ions] == ["ions/fraud-b"]
    assert [i.name for i in churn.alice.registry.ListIons(registry_pb2.ListIonsRequest()).ions] == [
        "ions/churn-a"
    ]
    assert churn.alice.registry.GetIon(registry_pb2.GetIonRequest(name="ions/churn-a")).project == (
        "churn"
    )
    assert bob.GetIon(registry_pb2.GetIonRequest(name="ions/fraud-b")).project == "fraud"

    calls: list[Callable[[], Any]] = [
        lambda: bob.GetRevision(registry_pb2.GetRevisionRequest(name="ions/churn-a/revisions/1")),
        lambda: bob.GetRevision(
            registry_pb2.GetRevisionRequest(name="ions/churn-a/revisions/latest")
        ),
        lambda: bob.ListRevisions(registry_pb2.ListRevisionsRequest(parent="ions/churn-a")),
        lambda: bob.CreateRevision(
            registry_pb2.CreateRevisionRequest(
                parent="ions/churn-a",
                definition_yaml=ION_YAML.format(ion="churn-a", days=1),
                request_id="r1",
            )
        ),
        lambda: bob.DeleteIon(registry_pb2.DeleteIonRequest(name="ions/churn-a")),
    ]
    for call in calls:
        assert code(call) == NOT_FOUND
    assert snapshot(churn) == before


def test_ion_ids_are_unique_across_projects(churn: Deployment) -> None:
    before = snapshot(churn)
    taken = refused(lambda: create_ion(churn.bob, "churn-a"))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "churn" not in str(taken.details()).replace("churn-a", "")
    again = refused(
        lambda: churn.bob.registry.CreateIon(
            registry_pb2.CreateIonRequest(
                ion_id="churn-a",
                definition_yaml=ION_YAML.format(ion="churn-a", days=3),
                request_id="same-id",
            )
        )
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    assert snapshot(churn) == before
    # A request id is the caller's own: bob's and alice's same id are two requests.
    for user, ion in ((churn.alice, "churn-b"), (churn.bob, "fraud-c")):
        made = user.registry.CreateIon(
            registry_pb2.CreateIonRequest(
                ion_id=ion, definition_yaml=ION_YAML.format(ion=ion, days=7), request_id="rid-1"
            )
        )
        assert made.name == f"ions/{ion}"


def upload(user: User, model: str, data: bytes) -> registry_pb2.ModelVersion:
    header = registry_pb2.ModelVersionHeader(parent=f"models/{model}")
    return user.registry.CreateModelVersion(
        iter(
            [
                registry_pb2.CreateModelVersionRequest(header=header),
                registry_pb2.CreateModelVersionRequest(chunk=data),
            ]
        )
    )


def test_another_projects_models_are_hidden(churn: Deployment) -> None:
    mine = upload(churn.alice, "churn-model", b"alice's weights")
    bob = churn.bob.registry
    name = mine.name
    assert code(lambda: bob.GetModelVersion(registry_pb2.GetModelVersionRequest(name=name))) == (
        NOT_FOUND
    )
    assert (
        code(
            lambda: bob.GetModelVersion(
                registry_pb2.GetModelVersionRequest(name="models/churn-model/versions/latest")
            )
        )
        == NOT_FOUND
    )
    assert (
        code(lambda: bob.DownloadModelVersion(registry_pb2.DownloadModelVersionRequest(name=name)))
        == NOT_FOUND
    )
    listed = bob.ListModelVersions(
        registry_pb2.ListModelVersionsRequest(parent="models/churn-model")
    )
    assert list(listed.model_versions) == []
    assert code(lambda: upload(churn.bob, "churn-model", b"bob's weights")) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    # alice's model is as it was; carol, in the same project, adds a version to it.
    alice = churn.alice.registry
    versions = alice.ListModelVersions(
        registry_pb2.ListModelVersionsRequest(parent="models/churn-model")
    ).model_versions
    assert [v.name for v in versions] == [name]
    assert upload(churn.carol, "churn-model", b"carol's weights").version_id == 2
    chunks = alice.DownloadModelVersion(registry_pb2.DownloadModelVersionRequest(name=name))
    assert b"".join(m.chunk for m in chunks) == b"alice's weights"
    assert churn.svc.registry.GetModelVersion(
        registry_pb2.GetModelVersionRequest(name=name)
    ).sha256 == (mine.sha256)


def test_another_projects_ion_is_not_found_in_the_recorder(churn: Deployment) -> None:
    rec = churn.bob.recorder
    before = snapshot(churn)
    cap_name = "ions/churn-a/captures/alice-cap"
    changed = recorder_pb2.Capture(name=cap_name, description="bob was here")
    new_cap = recorder_pb2.Capture()
    new_cap.start_time.FromMilliseconds(T0)
    new_cap.end_time.FromMilliseconds(T0 + 5)
    calls: dict[str, Callable[[], Any]] = {
        "append": lambda: rec.AppendEvents(
            recorder_pb2.AppendEventsRequest(parent="ions/churn-a", events=[event(T0 + 99)])
        ),
        "stream": lambda: rec.StreamEvents(
            iter(
                [
                    recorder_pb2.StreamEventsRequest(
                        batch_id=1,
                        batch=recorder_pb2.AppendEventsRequest(
                            parent="ions/churn-a", events=[event(T0 + 98)]
                        ),
                    )
                ]
            )
        ),
        "list events": lambda: rec.ListEvents(
            recorder_pb2.ListEventsRequest(parent="ions/churn-a")
        ),
        "watch": lambda: rec.WatchEvents(
            recorder_pb2.WatchEventsRequest(parent="ions/churn-a"), timeout=5
        ),
        "create capture": lambda: rec.CreateCapture(
            recorder_pb2.CreateCaptureRequest(
                parent="ions/churn-a", capture_id="bobs", capture=new_cap
            )
        ),
        "get capture": lambda: rec.GetCapture(recorder_pb2.GetCaptureRequest(name=cap_name)),
        "list captures": lambda: rec.ListCaptures(
            recorder_pb2.ListCapturesRequest(parent="ions/churn-a")
        ),
        "update capture": lambda: rec.UpdateCapture(
            recorder_pb2.UpdateCaptureRequest(
                capture=changed, update_mask=field_mask_pb2.FieldMask(paths=["description"])
            )
        ),
        "delete capture": lambda: rec.DeleteCapture(
            recorder_pb2.DeleteCaptureRequest(name=cap_name)
        ),
        "replay": lambda: rec.ReplayCapture(recorder_pb2.ReplayCaptureRequest(name=cap_name)),
        "export": lambda: rec.ExportCapture(recorder_pb2.ExportCaptureRequest(name=cap_name)),
        "get retention": lambda: rec.GetRetentionPolicy(
            recorder_pb2.GetRetentionPolicyRequest(name="ions/churn-a/retentionPolicy")
        ),
        "set retention": lambda: rec.UpdateRetentionPolicy(
            recorder_pb2.UpdateRetentionPolicyRequest(
                retention_policy=recorder_pb2.RetentionPolicy(
                    name="ions/churn-a/retentionPolicy", retention_days=1
                )
            )
        ),
        "run retention": lambda: rec.RunRetention(
            recorder_pb2.RunRetentionRequest(parent="ions/churn-a")
        ),
    }
    for what, call in calls.items():
        assert code(call) == NOT_FOUND, what
    # Across ions/-, bob sees no capture of churn; alice sees both of her project's.
    assert captures_of(churn.bob) == []
    assert [c[0] for c in captures_of(churn.alice)] == [
        "ions/churn-a/captures/alice-cap",
        "ions/churn-a/captures/carol-cap",
    ]
    # OTLP spans for another project's ION are rejected like those of a missing one.
    span = trace_pb2.Span(
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        name="bob's span",
        start_time_unix_nano=T0 * 1_000_000,
        end_time_unix_nano=T0 * 1_000_000 + 1,
    )
    spans = trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(
            attributes=[
                common_pb2.KeyValue(
                    key="relive.ion", value=common_pb2.AnyValue(string_value="churn-a")
                )
            ]
        ),
        scope_spans=[trace_pb2.ScopeSpans(spans=[span])],
    )
    answer = churn.bob.otlp.Export(
        trace_service_pb2.ExportTraceServiceRequest(resource_spans=[spans])
    )
    assert answer.partial_success.rejected_spans == 1
    assert "does not exist" in answer.partial_success.error_message
    assert snapshot(churn) == before
    # bob's own ION works for bob.
    appended = rec.AppendEvents(
        recorder_pb2.AppendEventsRequest(parent="ions/fraud-b", events=[event(T0 + 1)])
    )
    assert appended.stored_count == 1


def test_a_project_header_from_a_member_changes_nothing(churn: Deployment) -> None:
    """Only a service may say which project it works for; a member's project is its token's."""
    registry = churn.bob.registry
    with pytest.raises(grpc.RpcError) as caught:
        registry.GetIon(
            registry_pb2.GetIonRequest(name="ions/churn-a"), metadata=(("relive-project", "churn"),)
        )
    assert caught.value.code() == NOT_FOUND
    listed = registry.ListIons(
        registry_pb2.ListIonsRequest(), metadata=(("relive-project", "churn"),)
    )
    assert [i.name for i in listed.ions] == ["ions/fraud-b"]


def test_a_service_working_for_a_project_sees_only_that_project(churn: Deployment) -> None:
    svc = churn.svc.registry
    for_fraud = (("relive-project", "fraud"),)
    assert svc.GetIon(registry_pb2.GetIonRequest(name="ions/churn-a")).project == "churn"
    with pytest.raises(grpc.RpcError) as caught:
        svc.GetIon(registry_pb2.GetIonRequest(name="ions/churn-a"), metadata=for_fraud)
    assert caught.value.code() == NOT_FOUND
    made = svc.CreateIon(
        registry_pb2.CreateIonRequest(
            ion_id="fraud-svc", definition_yaml=ION_YAML.format(ion="fraud-svc", days=7)
        ),
        metadata=for_fraud,
    )
    assert made.project == "fraud"
    listed = churn.bob.registry.ListIons(registry_pb2.ListIonsRequest())
    assert [i.name for i in listed.ions] == ["ions/fraud-b", "ions/fraud-svc"]
    with pytest.raises(grpc.RpcError) as caught:
        svc.GetIon(
            registry_pb2.GetIonRequest(name="ions/churn-a"),
            metadata=(("relive-project", "Not An Id"),),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- captures within a project ---------------------------------------------------------------


def test_members_change_only_their_own_captures(churn: Deployment) -> None:
    alice, carol = churn.alice.recorder, churn.carol.recorder
    carols = "ions/churn-a/captures/carol-cap"
    alices = "ions/churn-a/captures/alice-cap"
    # Captures are visible project-wide.
    assert captures_of(churn.alice, "ions/churn-a") == [
        (alices, "alice", "alice's"),
        (carols, "carol", "carol's"),
    ]
    assert alice.GetCapture(recorder_pb2.GetCaptureRequest(name=carols)).owner == "carol"
    before = snapshot(churn)
    update = recorder_pb2.UpdateCaptureRequest(
        capture=recorder_pb2.Capture(name=carols, description="mine now"),
        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
    )
    assert code(lambda: alice.UpdateCapture(update)) == grpc.StatusCode.PERMISSION_DENIED
    assert code(lambda: alice.DeleteCapture(recorder_pb2.DeleteCaptureRequest(name=carols))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert snapshot(churn) == before
    # alice changes her own; carol, an admin, changes and deletes alice's.
    alice.UpdateCapture(
        recorder_pb2.UpdateCaptureRequest(
            capture=recorder_pb2.Capture(name=alices, description="spike"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )
    assert carol.UpdateCapture(
        recorder_pb2.UpdateCaptureRequest(
            capture=recorder_pb2.Capture(name=alices, description="checked by carol"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    ).description == ("checked by carol")
    carol.DeleteCapture(recorder_pb2.DeleteCaptureRequest(name=alices))
    assert captures_of(churn.alice) == [(carols, "carol", "carol's")]
    assert events_of(churn.alice, "churn-a") == before["events"]


# ---- import ----------------------------------------------------------------------------------


def _export(user: User, name: str) -> bytes:
    out = io.BytesIO()
    for message in user.recorder.ExportCapture(recorder_pb2.ExportCaptureRequest(name=name)):
        if message.WhichOneof("payload") == "chunk":
            out.write(message.chunk)
    return out.getvalue()


def _import(user: User, archive: bytes, capture_id: str) -> recorder_pb2.ImportCaptureResponse:
    messages = [
        recorder_pb2.ImportCaptureRequest(
            header=recorder_pb2.ImportCaptureHeader(capture_id=capture_id)
        ),
        recorder_pb2.ImportCaptureRequest(chunk=archive),
    ]
    return user.recorder.ImportCapture(iter(messages))


def test_an_export_leaves_out_another_projects_models(churn: Deployment) -> None:
    """An event may name any model; the export downloads only those of the caller's project."""
    ours = upload(churn.alice, "churn-model", b"alice's weights")
    theirs = upload(churn.bob, "fraud-model", b"bob's weights")
    named = []
    for i, version in enumerate((ours, theirs)):
        e = event(T0 + 500 + i, type="model.logged")
        e.model.model_version = version.name
        e.model.action = "logged"
        named.append(e)
    churn.alice.recorder.AppendEvents(
        recorder_pb2.AppendEventsRequest(parent="ions/churn-a", events=named)
    )
    out = io.BytesIO()
    for message in churn.alice.recorder.ExportCapture(
        recorder_pb2.ExportCaptureRequest(
            name="ions/churn-a/captures/alice-cap", include_models=True
        )
    ):
        if message.WhichOneof("payload") == "chunk":
            out.write(message.chunk)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        files = {Path(m.name).name: m for m in tar.getmembers()}
        blob = tar.extractfile(files[ours.name.replace("/", "_") + ".bin"])
        assert blob is not None and blob.read() == b"alice's weights"
    assert theirs.name.replace("/", "_") + ".bin" not in files


def test_import_never_writes_to_another_projects_ion(churn: Deployment) -> None:
    archive = _export(churn.alice, "ions/churn-a/captures/alice-cap")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert "capture.json" in {Path(m.name).name for m in tar.getmembers()}
    before = snapshot(churn)
    assert code(lambda: _import(churn.bob, archive, "stolen")) == grpc.StatusCode.ALREADY_EXISTS
    assert snapshot(churn) == before
    assert captures_of(churn.bob) == []

    # alice imports into her own ION; once it is deleted, her import recreates it in churn
    # (the recorder creates it with its service token, for alice's project).
    assert _import(churn.alice, archive, "copy").capture.name == "ions/churn-a/captures/copy"
    churn.alice.registry.DeleteIon(registry_pb2.DeleteIonRequest(name="ions/churn-a"))
    assert _import(churn.alice, archive, "again").events_already_present == 5
    ion = churn.alice.registry.GetIon(registry_pb2.GetIonRequest(name="ions/churn-a"))
    assert ion.project == "churn"
    assert code(lambda: churn.bob.registry.GetIon(registry_pb2.GetIonRequest(name=ion.name))) == (
        NOT_FOUND
    )


def test_a_deleted_ions_id_stays_with_its_project(churn: Deployment) -> None:
    """The recorder keeps a deleted ION's events, so another project never gets its id."""
    churn.alice.registry.DeleteIon(registry_pb2.DeleteIonRequest(name="ions/churn-a"))
    assert code(lambda: create_ion(churn.bob, "churn-a")) == grpc.StatusCode.ALREADY_EXISTS
    assert create_ion(churn.carol, "churn-a").project == "churn"
    assert len(events_of(churn.alice, "churn-a")) == 5


# ---- relive up -------------------------------------------------------------------------------


def test_the_stack_hands_auth_and_tls_to_its_services(
    auth_config: Config, self_signed: tuple[Path, Path]
) -> None:
    from relive.stack.runner import Stack, check_auth, check_health

    with pytest.raises(domain_errors.FailedPrecondition, match="RELIVE_SERVICE_TOKEN"):
        check_auth(auth_config.with_(service_token=None))
    with pytest.raises(domain_errors.FailedPrecondition, match="role: service"):
        check_auth(auth_config.with_(service_token="tok-carol"))
    key, cert = self_signed
    with pytest.raises(domain_errors.FailedPrecondition) as caught:
        check_auth(auth_config.with_(tls_cert=cert))
    assert caught.value.field == "RELIVE_TLS_KEY"
    with pytest.raises(domain_errors.FailedPrecondition) as caught:
        check_auth(auth_config.with_(tls_cert=cert, tls_key=key, tls_client_ca=cert))
    assert caught.value.field == "RELIVE_TLS_CLIENT_CA"

    # A self-signed certificate and no RELIVE_TLS_CA: the services trust their own certificate.
    secure = auth_config.with_(tls_cert=cert, tls_key=key)
    with Stack(secure, services=("registry", "recorder")) as stack:
        endpoints = stack.endpoints()
        assert check_health(endpoints["recorder"]) == "UNREACHABLE"  # plaintext is refused
        assert check_health(endpoints["recorder"], tls_ca=cert) == "SERVING"
        channels: list[grpc.Channel] = []
        try:

            def user(token: str | None) -> User:
                reg, rec = endpoints["registry"], endpoints["recorder"]
                return _user(reg, rec, token, channels, tls_ca=cert)

            alice, bob, anonymous = user("tok-alice"), user("tok-bob"), user(None)
            create_ion(alice, "churn-a")
            # The recorder reached the registry with the service token to find the ION.
            stored = alice.recorder.AppendEvents(
                recorder_pb2.AppendEventsRequest(parent="ions/churn-a", events=[event(T0)])
            )
            assert stored.stored_count == 1
            assert code(lambda: events_of(bob, "churn-a")) == NOT_FOUND
            assert code(lambda: captures_of(anonymous)) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            for ch in channels:
                ch.close()
