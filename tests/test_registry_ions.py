"""IONs and revisions over real gRPC against the embedded store."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from relive.errors import InvalidArgument, NotFound, from_rpc_error
from relive.registry.v1 import registry_pb2 as pb
from relive.registry.v1 import registry_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
CHURN = (REPO / "examples" / "churn" / "ion.yaml").read_text()

SMALL = """\
name: {name}
nodes:
  train:
    pipeline:
      components:
        fit: {{call: examples.churn.steps:fit}}
      outputs: {{model: fit}}
  approve:
    policy: approval
    params: {{auto_if: "stats.accuracy >= {threshold}"}}
edges:
  - {{from: train, to: approve, carries: model}}
"""


def small(name: str, threshold: float = 0.9) -> str:
    return SMALL.format(name=name, threshold=threshold)


@pytest.fixture
def stub(registry_channel: grpc.Channel) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(registry_channel)


def test_create_get_list_delete_ion(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    ion = stub.CreateIon(
        pb.CreateIonRequest(ion_id="churn", definition_yaml=CHURN, source_path="ion.yaml")
    )
    assert ion.name == "ions/churn"
    assert ion.latest_revision == 1
    assert ion.retention_days == 7
    assert ion.create_time.seconds > 0

    got = stub.GetIon(pb.GetIonRequest(name="ions/churn"))
    assert got == ion

    rev = stub.GetRevision(pb.GetRevisionRequest(name="ions/churn/revisions/latest"))
    assert rev.name == "ions/churn/revisions/1"
    assert rev.source_yaml == CHURN
    assert rev.source_path == "ion.yaml"
    assert len(rev.definition_sha256) == 64
    d = rev.definition
    assert d.name == "churn"
    assert set(d.nodes) == {"train", "approve", "infer", "infer_control", "canary"}
    fit = d.nodes["train"].pipeline.components["fit"]
    assert fit.call == "examples.churn.steps:fit"
    assert list(fit.after) == ["load"]
    assert fit.params["C"] == 1.0
    assert d.nodes["train"].pipeline.outputs["model"] == "fit"
    assert d.nodes["train"].schedule.every_launches == 3
    assert d.nodes["infer"].streaming.batches == 20
    assert d.nodes["approve"].policy.type == pb.POLICY_TYPE_APPROVAL
    assert d.nodes["approve"].policy.params["auto_if"] == "stats.accuracy >= 0.9"
    assert d.nodes["canary"].policy.type == pb.POLICY_TYPE_CANARY
    assert pb.Edge(from_node="train", to_node="approve", carries="model") in d.edges

    listed = stub.ListIons(pb.ListIonsRequest())
    assert [i.name for i in listed.ions] == ["ions/churn"]
    assert listed.next_page_token == ""

    stub.DeleteIon(pb.DeleteIonRequest(name="ions/churn"))
    with pytest.raises(grpc.RpcError) as e:
        stub.GetIon(pb.GetIonRequest(name="ions/churn"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.GetRevision(pb.GetRevisionRequest(name="ions/churn/revisions/1"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.ListIons(pb.ListIonsRequest()).ions == []
    # Deleting again is NOT_FOUND; recreating starts again at revision 1.
    with pytest.raises(grpc.RpcError) as e:
        stub.DeleteIon(pb.DeleteIonRequest(name="ions/churn"))
    assert isinstance(from_rpc_error(e.value), NotFound)
    again = stub.CreateIon(pb.CreateIonRequest(ion_id="churn", definition_yaml=CHURN))
    assert again.latest_revision == 1


def test_create_existing_ion_is_already_exists(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    stub.CreateIon(pb.CreateIonRequest(ion_id="a", definition_yaml=small("a")))
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateIon(pb.CreateIonRequest(ion_id="a", definition_yaml=small("a")))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_name_may_be_left_out_of_the_yaml(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    text = small("x").replace("name: x\n", "")
    ion = stub.CreateIon(pb.CreateIonRequest(ion_id="nameless", definition_yaml=text))
    rev = stub.GetRevision(pb.GetRevisionRequest(name="ions/nameless/revisions/1"))
    assert ion.name == "ions/nameless"
    assert rev.definition.name == "nameless"


def test_yaml_name_must_match_ion_id(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateIon(pb.CreateIonRequest(ion_id="other", definition_yaml=small("a")))
    err = from_rpc_error(e.value)
    assert isinstance(err, InvalidArgument)
    assert err.field == "name"
    assert ":1:" in err.message


def test_revisions_are_numbered_and_made_only_on_change(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=small("app")))
    first = stub.GetRevision(pb.GetRevisionRequest(name="ions/app/revisions/1"))

    # Same definition, other comments and layout: the latest revision comes back.
    same = "# a comment\n" + small("app").replace("nodes:\n", "nodes:   # the graph\n")
    again = stub.CreateRevision(pb.CreateRevisionRequest(parent="ions/app", definition_yaml=same))
    assert again.revision_id == 1
    assert again.definition_sha256 == first.definition_sha256
    assert stub.GetIon(pb.GetIonRequest(name="ions/app")).latest_revision == 1

    second = stub.CreateRevision(
        pb.CreateRevisionRequest(parent="ions/app", definition_yaml=small("app", 0.95))
    )
    assert second.name == "ions/app/revisions/2"
    assert second.definition_sha256 != first.definition_sha256
    ion = stub.GetIon(pb.GetIonRequest(name="ions/app"))
    assert ion.latest_revision == 2
    assert ion.update_time.ToDatetime() >= ion.create_time.ToDatetime()

    # Revisions are immutable: revision 1 still holds the first definition.
    assert stub.GetRevision(pb.GetRevisionRequest(name="ions/app/revisions/1")) == first
    latest = stub.GetRevision(pb.GetRevisionRequest(name="ions/app/revisions/latest"))
    assert latest == second

    # Going back to the first definition is a change too: revision 3.
    third = stub.CreateRevision(
        pb.CreateRevisionRequest(parent="ions/app", definition_yaml=small("app"))
    )
    assert third.revision_id == 3
    assert third.definition_sha256 == first.definition_sha256

    listed = stub.ListRevisions(pb.ListRevisionsRequest(parent="ions/app"))
    assert [r.revision_id for r in listed.revisions] == [3, 2, 1]

    # Paging, newest first.
    page = stub.ListRevisions(pb.ListRevisionsRequest(parent="ions/app", page_size=2))
    assert [r.revision_id for r in page.revisions] == [3, 2]
    rest = stub.ListRevisions(
        pb.ListRevisionsRequest(parent="ions/app", page_size=2, page_token=page.next_page_token)
    )
    assert [r.revision_id for r in rest.revisions] == [1]
    assert rest.next_page_token == ""


def test_retention_follows_the_latest_revision(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=small("app")))
    text = small("app").replace("name: app\n", "name: app\nretention_days: 30\n")
    stub.CreateRevision(pb.CreateRevisionRequest(parent="ions/app", definition_yaml=text))
    assert stub.GetIon(pb.GetIonRequest(name="ions/app")).retention_days == 30


def test_revision_of_a_missing_ion(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    for call in (
        lambda: stub.CreateRevision(
            pb.CreateRevisionRequest(parent="ions/ghost", definition_yaml=small("ghost"))
        ),
        lambda: stub.GetRevision(pb.GetRevisionRequest(name="ions/ghost/revisions/latest")),
        lambda: stub.ListRevisions(pb.ListRevisionsRequest(parent="ions/ghost")),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=small("app")))
    with pytest.raises(grpc.RpcError) as e:
        stub.GetRevision(pb.GetRevisionRequest(name="ions/app/revisions/9"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_paging_tokens_stay_valid_while_ions_are_added(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    for i in range(0, 20, 2):  # ion-00, ion-02, ... ion-18
        stub.CreateIon(
            pb.CreateIonRequest(ion_id=f"ion-{i:02d}", definition_yaml=small(f"ion-{i:02d}"))
        )
    first = stub.ListIons(pb.ListIonsRequest(page_size=3))
    assert [i.name for i in first.ions] == ["ions/ion-00", "ions/ion-02", "ions/ion-04"]
    assert first.next_page_token

    # New IONs land before, inside and after the pages still to come.
    for ion_id in ("aaa", "ion-01", "ion-05", "ion-07", "zzz"):
        stub.CreateIon(pb.CreateIonRequest(ion_id=ion_id, definition_yaml=small(ion_id)))

    seen = [i.name for i in first.ions]
    token = first.next_page_token
    while token:
        page = stub.ListIons(pb.ListIonsRequest(page_size=3, page_token=token))
        assert len(page.ions) <= 3
        seen += [i.name for i in page.ions]
        token = page.next_page_token
    # No ION twice, none skipped that sorts after the first page, order kept.
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    expected_after = sorted(
        [f"ions/ion-{i:02d}" for i in range(6, 20, 2)] + ["ions/ion-05", "ions/ion-07", "ions/zzz"]
    )
    assert seen[3:] == expected_after
    # The new ION that sorts before the token's position is on a fresh first page.
    fresh = stub.ListIons(pb.ListIonsRequest(page_size=1000))
    assert len(fresh.ions) == 15
    assert fresh.ions[0].name == "ions/aaa"
    assert fresh.next_page_token == ""


def test_page_size_defaults_and_caps(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    for i in range(55):
        stub.CreateIon(pb.CreateIonRequest(ion_id=f"i{i:02d}", definition_yaml=small(f"i{i:02d}")))
    page = stub.ListIons(pb.ListIonsRequest())
    assert len(page.ions) == 50
    rest = stub.ListIons(pb.ListIonsRequest(page_token=page.next_page_token))
    assert len(rest.ions) == 5
    assert len(stub.ListIons(pb.ListIonsRequest(page_size=5000)).ions) == 55


def test_page_token_from_another_list_is_rejected(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=small("app")))
    for text in (small("app", 0.5), small("app", 0.6)):
        stub.CreateRevision(pb.CreateRevisionRequest(parent="ions/app", definition_yaml=text))
    page = stub.ListRevisions(pb.ListRevisionsRequest(parent="ions/app", page_size=1))
    with pytest.raises(grpc.RpcError) as e:
        stub.ListIons(pb.ListIonsRequest(page_token=page.next_page_token))
    err = from_rpc_error(e.value)
    assert isinstance(err, InvalidArgument)
    assert err.field == "page_token"


def test_create_ion_is_idempotent_with_a_request_id(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    request = pb.CreateIonRequest(ion_id="app", definition_yaml=small("app"), request_id="req-1")
    first = stub.CreateIon(request)
    again = stub.CreateIon(request)
    assert again == first
    # Without the request id, a second create is a conflict.
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=small("app")))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Another request id for the same ION is a conflict too.
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateIon(
            pb.CreateIonRequest(ion_id="app", definition_yaml=small("app"), request_id="req-2")
        )
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_create_revision_is_idempotent_with_a_request_id(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=small("app")))
    v2 = pb.CreateRevisionRequest(
        parent="ions/app", definition_yaml=small("app", 0.8), request_id="r2"
    )
    first = stub.CreateRevision(v2)
    assert first.revision_id == 2
    # A third definition moves the ION on...
    stub.CreateRevision(
        pb.CreateRevisionRequest(parent="ions/app", definition_yaml=small("app", 0.7))
    )
    # ...yet a repeat of the second request still answers revision 2, and makes nothing.
    assert stub.CreateRevision(v2) == first
    assert stub.GetIon(pb.GetIonRequest(name="ions/app")).latest_revision == 3


def test_concurrent_repeats_of_one_request_make_one_ion(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    request = pb.CreateIonRequest(ion_id="app", definition_yaml=small("app"), request_id="same")
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: stub.CreateIon(request), range(6)))
    assert {r.name for r in results} == {"ions/app"}
    assert stub.GetIon(pb.GetIonRequest(name="ions/app")).latest_revision == 1


def test_request_id_after_delete_creates_afresh(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    request = pb.CreateIonRequest(ion_id="app", definition_yaml=small("app"), request_id="r")
    stub.CreateIon(request)
    stub.DeleteIon(pb.DeleteIonRequest(name="ions/app"))
    again = stub.CreateIon(request)
    assert again.latest_revision == 1
    assert stub.GetIon(pb.GetIonRequest(name="ions/app")) == again


def test_registering_the_same_file_after_a_commit_records_the_new_commit(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    def ref(commit: str, dirty: bool = False) -> pb.CodeRef:
        return pb.CodeRef(
            module="examples.churn.steps", repo="r", path="p.py", commit=commit, dirty=dirty
        )

    stub.CreateIon(
        pb.CreateIonRequest(ion_id="code", definition_yaml=small("code"), code_refs=[ref("a1")])
    )
    same = stub.CreateRevision(
        pb.CreateRevisionRequest(
            parent="ions/code", definition_yaml=small("code"), code_refs=[ref("a1")]
        )
    )
    assert same.revision_id == 1
    moved = stub.CreateRevision(
        pb.CreateRevisionRequest(
            parent="ions/code", definition_yaml=small("code"), code_refs=[ref("c3")]
        )
    )
    assert moved.revision_id == 2 and [r.commit for r in moved.code_refs] == ["c3"]
    assert moved.definition_sha256 == same.definition_sha256
    dirty = stub.CreateRevision(
        pb.CreateRevisionRequest(
            parent="ions/code", definition_yaml=small("code"), code_refs=[ref("c3", dirty=True)]
        )
    )
    assert dirty.revision_id == 3
    # A client that sends no refs does not know the code: the latest revision stands.
    unknown = stub.CreateRevision(
        pb.CreateRevisionRequest(parent="ions/code", definition_yaml=small("code"))
    )
    assert unknown.revision_id == 3
