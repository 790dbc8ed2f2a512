"""Every validation error answers INVALID_ARGUMENT naming the field, the node and the line."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from relive.errors import InvalidArgument, ReliveError, from_rpc_error
from relive.registry.v1 import registry_pb2 as pb
from relive.registry.v1 import registry_pb2_grpc

Stub = registry_pb2_grpc.RegistryServiceStub

GOOD = """\
name: app
nodes:
  train:
    pipeline:
      components:
        load: {call: examples.churn.steps:load}
        fit: {call: examples.churn.steps:fit, after: [load]}
      outputs: {model: fit}
  approve:
    policy: approval
    params: {auto_if: "stats.accuracy >= 0.9"}
  infer:
    pipeline:
      components:
        score: {call: examples.churn.steps:score}
edges:
  - {from: train, to: approve, carries: model}
  - {from: approve, to: infer, carries: model}
"""


@pytest.fixture
def stub(registry_channel: grpc.Channel) -> Stub:
    return registry_pb2_grpc.RegistryServiceStub(registry_channel)


def rpc_error(fn: Callable[[], object]) -> ReliveError:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return from_rpc_error(e.value)


def create_error(stub: Stub, text: str, ion_id: str = "app") -> ReliveError:
    return rpc_error(
        lambda: stub.CreateIon(
            pb.CreateIonRequest(ion_id=ion_id, definition_yaml=text, source_path="ion.yaml")
        )
    )


def test_the_good_file_registers(stub: Stub) -> None:
    ion = stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=GOOD))
    assert ion.latest_revision == 1


# (name, edit of GOOD: (old, new), field, line, words the message must contain)
CASES = [
    (
        "unknown top-level key",
        ("name: app\n", "name: app\nowner: me\n"),
        "owner",
        2,
        ["unknown key 'owner'"],
    ),
    (
        "unknown node key",
        ("    policy: approval\n", "    policy: approval\n    retries: 3\n"),
        "nodes.approve.retries",
        11,
        ["node 'approve'", "unknown key 'retries'"],
    ),
    (
        "unknown component key",
        (
            "load: {call: examples.churn.steps:load}",
            "load: {call: examples.churn.steps:load, x: 1}",
        ),
        "nodes.train.pipeline.components.load.x",
        6,
        ["node 'train'", "unknown key 'x'"],
    ),
    (
        "unknown pipeline key",
        ("      outputs: {model: fit}\n", "      outputs: {model: fit}\n      retry: 2\n"),
        "nodes.train.pipeline.retry",
        9,
        ["unknown key 'retry'"],
    ),
    (
        "unknown edge key",
        ("{from: approve, to: infer, carries: model}", "{from: approve, to: infer, via: x}"),
        "edges.1.via",
        18,
        ["unknown key 'via'"],
    ),
    (
        "call module missing",
        ("examples.churn.steps:fit", "examples.churn.nosuch:fit"),
        "nodes.train.pipeline.components.fit.call",
        7,
        ["node 'train'", "cannot import", "examples.churn.nosuch"],
    ),
    (
        "call function missing",
        ("examples.churn.steps:fit", "examples.churn.steps:fitt"),
        "nodes.train.pipeline.components.fit.call",
        7,
        ["cannot import", "no top-level 'fitt'"],
    ),
    (
        "call malformed",
        ("examples.churn.steps:fit", "examples.churn.steps.fit"),
        "nodes.train.pipeline.components.fit.call",
        7,
        ["package.module:function"],
    ),
    (
        "edge to an unknown node",
        ("{from: approve, to: infer, carries: model}", "{from: approve, to: nowhere}"),
        "edges.1.to",
        18,
        ["'nowhere'", "not a node"],
    ),
    (
        "edge from an unknown node",
        ("{from: approve, to: infer, carries: model}", "{from: ghost, to: infer}"),
        "edges.1.from",
        18,
        ["'ghost'", "not a node"],
    ),
    (
        "after an unknown component",
        ("after: [load]", "after: [lod]"),
        "nodes.train.pipeline.components.fit.after.0",
        7,
        ["'lod'", "not a component"],
    ),
    (
        "edge carries what nobody produces",
        (
            "{from: train, to: approve, carries: model}",
            "{from: train, to: approve, carries: scaler}",
        ),
        "edges.0.carries",
        17,
        ["'scaler'", "node 'train' produces model"],
    ),
    (
        "edge from a pipeline without outputs",
        ("{from: approve, to: infer, carries: model}", "{from: infer, to: approve}"),
        "edges.1.carries",
        18,
        ["node 'infer' produces nothing"],
    ),
    (
        "cycle of nodes",
        (
            "  - {from: approve, to: infer, carries: model}\n",
            "  - {from: approve, to: infer, carries: model}\n  - {from: approve, to: train}\n",
        ),
        "edges.2",
        19,
        ["cycle", "approve -> train -> approve"],
    ),
    (
        "cycle of components",
        (
            "load: {call: examples.churn.steps:load}",
            "load: {call: examples.churn.steps:load, after: [fit]}",
        ),
        "nodes.train.pipeline.components.fit.after",
        7,
        ["cycle", "fit", "load"],
    ),
    (
        "unknown policy type",
        ("policy: approval", "policy: aproval"),
        "nodes.approve.policy",
        10,
        ["unknown policy type 'aproval'"],
    ),
    (
        "auto_if does not parse",
        ('auto_if: "stats.accuracy >= 0.9"', 'auto_if: "accuracy is good"'),
        "nodes.approve.params.auto_if",
        11,
        ["stats.<name> <op> <number>"],
    ),
    (
        "approval timeout not positive",
        ('auto_if: "stats.accuracy >= 0.9"', "timeout_s: -5"),
        "nodes.approve.params.timeout_s",
        11,
        ["positive"],
    ),
    (
        "approval param of the wrong type",
        ('auto_if: "stats.accuracy >= 0.9"', "timeout_s: soon"),
        "nodes.approve.params.timeout_s",
        11,
        ["must be a number"],
    ),
    (
        "unknown policy parameter",
        ('auto_if: "stats.accuracy >= 0.9"', "threshold: 0.9"),
        "nodes.approve.params.threshold",
        11,
        ["unknown approval parameter 'threshold'"],
    ),
    (
        "canary disagreement out of range",
        (
            'policy: approval\n    params: {auto_if: "stats.accuracy >= 0.9"}',
            "policy: canary\n    params: {max_disagreement: 1.5}",
        ),
        "nodes.approve.params.max_disagreement",
        11,
        ["between 0 and 1"],
    ),
    (
        "canary without max_disagreement",
        (
            'policy: approval\n    params: {auto_if: "stats.accuracy >= 0.9"}',
            "policy: canary\n    params: {control: infer}",
        ),
        "nodes.approve.params.max_disagreement",
        11,
        ["required"],
    ),
    (
        "canary control names an unknown node",
        (
            'policy: approval\n    params: {auto_if: "stats.accuracy >= 0.9"}',
            "policy: canary\n    params: {control: ghost, max_disagreement: 0.1}",
        ),
        "nodes.approve.params.control",
        11,
        ["'ghost'", "not a node"],
    ),
    (
        "ab_split weights do not sum to 1",
        (
            'policy: approval\n    params: {auto_if: "stats.accuracy >= 0.9"}',
            "policy: ab_split\n    params: {weights: {train: 0.5, infer: 0.4}}",
        ),
        "nodes.approve.params.weights",
        11,
        ["sum to 1"],
    ),
    (
        "ab_split weight names an unknown node",
        (
            'policy: approval\n    params: {auto_if: "stats.accuracy >= 0.9"}',
            "policy: ab_split\n    params: {weights: {train: 0.5, ghost: 0.5}}",
        ),
        "nodes.approve.params.weights.ghost",
        11,
        ["'ghost'"],
    ),
    (
        "ensemble with an unknown method",
        (
            'policy: approval\n    params: {auto_if: "stats.accuracy >= 0.9"}',
            "policy: ensemble\n    params: {members: [train], method: best}",
        ),
        "nodes.approve.params.method",
        11,
        ["unknown method 'best'"],
    ),
    (
        "schedule of zero launches",
        (
            "      outputs: {model: fit}\n",
            "      outputs: {model: fit}\n    schedule: {every_launches: 0}\n",
        ),
        "nodes.train.schedule.every_launches",
        9,
        ["at least 1"],
    ),
    (
        "schedule with a negative period",
        (
            "      outputs: {model: fit}\n",
            "      outputs: {model: fit}\n    schedule: {every_seconds: -1}\n",
        ),
        "nodes.train.schedule.every_seconds",
        9,
        ["positive"],
    ),
    (
        "schedule with an unknown key",
        (
            "      outputs: {model: fit}\n",
            "      outputs: {model: fit}\n    schedule: {every_day: 1}\n",
        ),
        "nodes.train.schedule.every_day",
        9,
        ["unknown key 'every_day'"],
    ),
    (
        "schedule on a policy",
        ("    policy: approval\n", "    policy: approval\n    schedule: {every_launches: 2}\n"),
        "nodes.approve.schedule",
        11,
        ["only to pipeline"],
    ),
    (
        "streaming scores with an unknown component",
        (
            "        score: {call: examples.churn.steps:score}\n",
            "        score: {call: examples.churn.steps:score}\n"
            "    streaming: {batches: 3, score: predict}\n",
        ),
        "nodes.infer.streaming.score",
        16,
        ["'predict'"],
    ),
    (
        "streaming with a bad batch count",
        (
            "        score: {call: examples.churn.steps:score}\n",
            "        score: {call: examples.churn.steps:score}\n    streaming: {batches: many}\n",
        ),
        "nodes.infer.streaming.batches",
        16,
        ["integer"],
    ),
    (
        "node id malformed",
        ("  infer:\n", "  Infer-1:\n"),
        "nodes.Infer-1",
        12,
        ["node id", "malformed"],
    ),
    (
        "node id too long",
        ("  infer:\n", "  " + "i" * 64 + ":\n"),
        "nodes." + "i" * 64,
        12,
        ["63"],
    ),
    (
        "node with both pipeline and policy",
        (
            "    policy: approval\n",
            "    policy: approval\n    pipeline: {components: {a: {command: [x]}}}\n",
        ),
        "nodes.approve",
        9,
        ["exactly one of 'pipeline' or 'policy'"],
    ),
    (
        "retention not positive",
        ("name: app\n", "name: app\nretention_days: 0\n"),
        "retention_days",
        2,
        ["at least 1"],
    ),
    (
        "ION name malformed",
        ("name: app\n", "name: App_1\n"),
        "name",
        1,
        ["malformed"],
    ),
]


@pytest.mark.parametrize(
    ("edit", "field", "line", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_validation_error(
    stub: Stub, edit: tuple[str, str], field: str, line: int, words: list[str]
) -> None:
    old, new = edit
    assert old in GOOD, old
    ion_id = "app"
    text = GOOD.replace(old, new, 1)
    err = create_error(stub, text, ion_id)
    assert isinstance(err, InvalidArgument), err
    assert err.reason == "INVALID_ARGUMENT"
    assert err.field == field, err.message
    assert err.metadata["line"] == str(line), err.message
    assert err.message.startswith(f"ion.yaml:{line}:"), err.message
    for word in words:
        assert word in err.message, err.message
    # Nothing was created.
    assert list(stub.ListIons(pb.ListIonsRequest()).ions) == []


def test_malformed_yaml_names_line_and_column(stub: Stub) -> None:
    text = "name: app\nnodes:\n  train:\n    pipeline: x: y\n"
    err = create_error(stub, text)
    assert isinstance(err, InvalidArgument)
    assert err.field == "definition_yaml"
    assert err.metadata["line"] == "4"
    assert "column" in err.metadata
    assert err.message.startswith(f"ion.yaml:4:{err.metadata['column']}: malformed YAML")


def test_tab_indented_yaml_is_malformed(stub: Stub) -> None:
    err = create_error(stub, "name: app\nnodes:\n\ttrain: {}\n")
    assert isinstance(err, InvalidArgument)
    assert err.field == "definition_yaml"
    assert err.message.startswith("ion.yaml:3:")


def test_duplicate_keys_are_rejected(stub: Stub) -> None:
    text = GOOD.replace("  infer:\n", "  approve:\n    policy: approval\n  infer:\n")
    err = create_error(stub, text)
    assert err.field == "nodes.approve"
    assert "duplicate key" in err.message
    assert err.metadata["line"] == "12"


def test_empty_and_non_mapping_files(stub: Stub) -> None:
    assert create_error(stub, "").field == "definition_yaml"
    err = create_error(stub, "- a\n- b\n")
    assert err.field == "definition_yaml"
    assert "mapping" in err.message
    err = create_error(stub, "name: app\n")
    assert err.field == "nodes"
    assert "required" in err.message


def test_message_without_source_path_names_the_field(stub: Stub) -> None:
    text = GOOD.replace("examples.churn.steps:fit", "examples.churn.steps:nope")
    err = rpc_error(lambda: stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=text)))
    assert err.message.startswith("definition_yaml:7: node 'train'")


def test_command_components_need_no_import(stub: Stub) -> None:
    text = GOOD.replace(
        "score: {call: examples.churn.steps:score}",
        'score: {command: ["node", "score.js"], image: "node:20"}',
    )
    stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=text))
    rev = stub.GetRevision(pb.GetRevisionRequest(name="ions/app/revisions/1"))
    score = rev.definition.nodes["infer"].pipeline.components["score"]
    assert list(score.command) == ["node", "score.js"]
    assert score.image == "node:20"


@pytest.mark.parametrize(
    ("ion_id", "field"),
    [
        ("", "ion_id"),
        ("a" * 64, "ion_id"),
        ("Bad_Name", "ion_id"),
        ("-lead", "ion_id"),
        ("trail-", "ion_id"),
    ],
)
def test_bad_ion_ids(stub: Stub, ion_id: str, field: str) -> None:
    err = create_error(stub, GOOD.replace("name: app\n", ""), ion_id)
    assert isinstance(err, InvalidArgument)
    assert err.field == field
    assert "ion_id" in err.message


@pytest.mark.parametrize(
    ("call_name", "field"),
    [
        ("GetIon", "name"),
        ("DeleteIon", "name"),
    ],
)
def test_bad_resource_names(stub: Stub, call_name: str, field: str) -> None:
    request_type = getattr(pb, f"{call_name}Request")
    for name in ("ions/" + "x" * 64, "ions/Bad", "churn", "ions/a/b", ""):
        err = rpc_error(lambda n=name: getattr(stub, call_name)(request_type(name=n)))  # type: ignore[misc]
        assert isinstance(err, InvalidArgument), (name, err)
        assert err.field.startswith(field), (name, err.field)


def test_bad_revision_names(stub: Stub) -> None:
    for name in ("ions/app/revisions/x", "ions/app/revisions/0", "ions/app/versions/1"):
        err = rpc_error(lambda n=name: stub.GetRevision(pb.GetRevisionRequest(name=n)))  # type: ignore[misc]
        assert isinstance(err, InvalidArgument), (name, err)
        assert err.field.startswith("name")


def test_negative_page_size(stub: Stub) -> None:
    err = rpc_error(lambda: stub.ListIons(pb.ListIonsRequest(page_size=-1)))
    assert isinstance(err, InvalidArgument)
    assert err.field == "page_size"
    err = rpc_error(
        lambda: stub.ListRevisions(pb.ListRevisionsRequest(parent="ions/app", page_size=-5))
    )
    assert err.field == "page_size"
    err = rpc_error(
        lambda: stub.ListModelVersions(pb.ListModelVersionsRequest(parent="models/m", page_size=-1))
    )
    assert err.field == "page_size"


def test_malformed_page_token(stub: Stub) -> None:
    err = rpc_error(lambda: stub.ListIons(pb.ListIonsRequest(page_token="%%%not-a-token")))
    assert isinstance(err, InvalidArgument)
    assert err.field == "page_token"


def test_too_long_request_id(stub: Stub) -> None:
    err = rpc_error(
        lambda: stub.CreateIon(
            pb.CreateIonRequest(ion_id="app", definition_yaml=GOOD, request_id="r" * 200)
        )
    )
    assert isinstance(err, InvalidArgument)
    assert err.field == "request_id"


def test_revision_validation_names_the_line_too(stub: Stub) -> None:
    stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=GOOD))
    text = GOOD.replace("{from: approve, to: infer, carries: model}", "{from: approve, to: x}")
    err = rpc_error(
        lambda: stub.CreateRevision(
            pb.CreateRevisionRequest(parent="ions/app", definition_yaml=text, source_path="v2.yaml")
        )
    )
    assert err.field == "edges.1.to"
    assert err.message.startswith("v2.yaml:18:")
    assert stub.GetIon(pb.GetIonRequest(name="ions/app")).latest_revision == 1


def test_calls_into_installed_packages_resolve_without_importing(stub: Stub) -> None:
    text = GOOD.replace("examples.churn.steps:score", "sklearn.linear_model:LogisticRegression")
    stub.CreateIon(pb.CreateIonRequest(ion_id="app", definition_yaml=text))
    bad = GOOD.replace("examples.churn.steps:score", "sklearn.linear_model:NoSuchModel")
    err = create_error(stub, bad.replace("name: app\n", ""), "other")
    assert err.field == "nodes.infer.pipeline.components.score.call"
    assert "no top-level 'NoSuchModel'" in err.message
