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
