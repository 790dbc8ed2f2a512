"""Each policy kind's parameter declarations, seen through ION parsing: the registry checks
an ION file with them (naming line and field), the executor fills in their defaults, and
the table of kinds is the one name <-> enum mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from relive import policies
from relive.errors import InvalidArgument
from relive.registry import definition as ion_file
from relive.registry.v1 import registry_pb2
from tests.unit.memory_policy_context import REPO_ROOT, ion

# Three trained models and a scorer; NODE is the policy node under test.
BASE = """\
name: test
nodes:
  a:
    pipeline:
      components: {fit: {call: examples.patterns.steps:fit}}
      outputs: {model: fit}
  b:
    pipeline:
      components: {fit: {call: examples.patterns.steps:fit}}
      outputs: {model: fit}
  control:
    pipeline:
      components: {score: {call: examples.patterns.steps:score}}
  infer:
    pipeline:
      components: {score: {call: examples.patterns.steps:score}}
  pick:
    policy: KIND
    params: PARAMS
edges:
  - {from: a, to: pick}
  - {from: b, to: pick}
  - {from: a, to: infer}
"""
PICK_LINE = BASE.splitlines().index("    params: PARAMS") + 1


def parse(kind: str, params: str) -> dict:
    text = BASE.replace("KIND", kind).replace("PARAMS", params)
    return ion_file.parse(text, source="ion.yaml", ion_id="test", code_path=[str(REPO_ROOT)])


VALID = [
    ("model_transfer", "{}"),
    ("approval", '{auto_if: "stats.accuracy >= 0.9", timeout_s: 60, on_timeout: reject}'),
    ("canary", "{max_disagreement: 0.1, control: control, min_samples: 10}"),
    ("ensemble", "{members: [a, b], method: mean, weights: [1, 2]}"),
    ("ab_split", "{weights: {a: 0.7, b: 0.3}, seed: 3}"),
    (
        "champion_challenger",
        "{champion: a, challenger: b, metric: accuracy, min_gain: 0.01, direction: lower}",
    ),
]


@pytest.mark.parametrize(("kind", "params"), VALID)
def test_valid_params_are_stored_as_written(kind: str, params: str) -> None:
    parsed = parse(kind, params)
    policy = parsed["nodes"]["pick"]["policy"]
    assert policy["type"] == kind
    # No defaults are added: what the registry stores (and hashes) is what the file says.
    assert policy["params"] == yaml.safe_load(params)


ERRORS = [
    (
        "approval",
        "{threshold: 0.9}",
        "threshold",
        "unknown approval parameter 'threshold'; expected: auto_if, timeout_s, on_timeout",
    ),
    ("model_transfer", "{x: 1}", "x", "unknown model_transfer parameter 'x'; expected: none"),
    ("approval", "{timeout_s: -5}", "timeout_s", "must be positive, got -5"),
    ("approval", "{timeout_s: soon}", "timeout_s", "must be a number, got a string"),
    ("approval", "{on_timeout: maybe}", "on_timeout", "must be 'approve' or 'reject'"),
    ("approval", '{auto_if: "accuracy is good"}', "auto_if", "is not a valid rule"),
    ("canary", "{control: control}", "max_disagreement", "is required for a canary policy"),
    ("canary", "{max_disagreement: 1.5}", "max_disagreement", "must be between 0 and 1, got 1.5"),
    ("canary", "{max_disagreement: 0.1, min_samples: 0}", "min_samples", "at least 1, got 0"),
    (
        "canary",
        "{max_disagreement: 0.1, control: Ctl}",
        "control",
        "control node 'Ctl' is malformed",
    ),
    (
        "canary",
        "{max_disagreement: 0.1, control: ghost}",
        "control",
        "names node 'ghost', which is not a node of this ION",
    ),
    ("ensemble", "{members: a}", "members", "must be a list of node ids"),
    ("ensemble", "{members: [a, ghost]}", "members.1", "names node 'ghost'"),
    (
        "ensemble",
        "{method: best}",
        "method",
        "unknown method 'best'; expected one of: mean, vote, median",
    ),
    ("ensemble", "{weights: [1, -1]}", "weights.1", "must be positive, got -1"),
    ("ensemble", "{members: [a, b], weights: [1]}", "weights", "has 1 weights for 2 members"),
    ("ab_split", "{seed: 1}", "weights", "is required for an ab_split policy"),
    ("ab_split", "{weights: {a: 1.0}}", "weights", "must map at least two node ids"),
    ("ab_split", "{weights: {a: 0.5, b: 0.4}}", "weights", "shares must sum to 1, they sum to 0.9"),
    ("ab_split", "{weights: {a: 0.5, ghost: 0.5}}", "weights.ghost", "names node 'ghost'"),
    ("ab_split", "{weights: {a: 0.5, b: 0.5}, seed: -1}", "seed", "must be at least 0, got -1"),
    (
        "champion_challenger",
        "{challenger: b, metric: accuracy}",
        "champion",
        "is required for a champion_challenger policy",
    ),
    ("champion_challenger", "{champion: a, metric: accuracy}", "challenger", "is required"),
    ("champion_challenger", "{champion: a, challenger: b}", "metric", "is required"),
    (
        "champion_challenger",
        "{champion: a, challenger: a, metric: accuracy}",
        "challenger",
        "names the champion too",
    ),
    (
        "champion_challenger",
        "{champion: a, challenger: ghost, metric: accuracy}",
        "challenger",
        "names node 'ghost'",
    ),
    (
        "champion_challenger",
        "{champion: a, challenger: b, metric: 'no good'}",
        "metric",
        "must be a stat name",
    ),
    (
        "champion_challenger",
        "{champion: a, challenger: b, metric: auc, min_gain: -0.1}",
        "min_gain",
        "must be at least 0, got -0.1",
    ),
    (
        "champion_challenger",
        "{champion: a, challenger: b, metric: auc, direction: up}",
        "direction",
        "must be 'higher' or 'lower'",
    ),
]


@pytest.mark.parametrize(("kind", "params", "field", "words"), ERRORS)
def test_bad_params_name_the_file_line_and_field(
    kind: str, params: str, field: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse(kind, params)
    assert e.value.field == f"nodes.pick.params.{field}"
    assert e.value.message.startswith(f"ion.yaml:{PICK_LINE}: node 'pick': "), e.value.message
    assert e.value.metadata["node"] == "pick"
    assert words in e.value.message


def test_an_unknown_kind_lists_every_kind_of_the_table() -> None:
    with pytest.raises(InvalidArgument) as e:
        parse("champion", "{}")
    assert e.value.field == "nodes.pick.policy"
    assert e.value.message.endswith(
        "unknown policy type 'champion'; expected one of: model_transfer, approval, canary, "
        "ensemble, ab_split, champion_challenger"
    )


def test_the_table_is_the_one_name_enum_mapping_and_matches_the_proto() -> None:
    names = [k.name for k in policies.KINDS]
    assert len(set(names)) == len(names)
    proto = {v for v in registry_pb2.PolicyType.values() if v}
    assert {k.enum for k in policies.KINDS} == proto  # every enum value has its kind
    for k in policies.KINDS:
        assert policies.by_name(k.name) is k and policies.by_enum(k.enum) is k
        assert registry_pb2.PolicyType.Name(k.enum) == f"POLICY_TYPE_{k.name.upper()}"
    assert policies.by_name("schedule") is None and policies.by_enum(0) is None
    parsed = ion(
        BASE.replace("KIND", "champion_challenger").replace(
            "PARAMS", "{champion: a, challenger: b, metric: accuracy}"
        )
    )
    assert parsed.nodes["pick"].policy.type == registry_pb2.POLICY_TYPE_CHAMPION_CHALLENGER


def test_defaults_come_from_the_declarations() -> None:
    def defaults(name: str) -> dict:
        kind = policies.by_name(name)
        assert kind is not None
        return kind.with_defaults({})

    assert defaults("approval") == {"timeout_s": 600.0}
    assert defaults("canary") == {"min_samples": 1}
    assert defaults("ensemble") == {"method": "vote"}
    assert defaults("ab_split") == {}
    assert defaults("champion_challenger") == {"min_gain": 0.0, "direction": "higher"}
    kind = policies.by_name("approval")
    assert kind is not None and kind.with_defaults({"timeout_s": 5}) == {"timeout_s": 5}


def test_node_references_are_dependencies() -> None:
    definition = ion(
        BASE.replace("KIND", "champion_challenger").replace(
            "PARAMS", "{champion: b, challenger: control, metric: accuracy}"
        )
    )
    kind = policies.by_name("champion_challenger")
    assert kind is not None
    assert kind.depends_on(definition, "pick") == ["b", "control"]


def test_every_kind_and_parameter_is_documented() -> None:
    doc = (Path(REPO_ROOT) / "docs" / "ion-schema.md").read_text()
    for kind in policies.KINDS:
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{kind.name}`")), "")
        assert row, f"docs/ion-schema.md has no row for {kind.name}"
        for param in kind.spec.params:
            assert f"`{param.name}`" in row, f"{kind.name}.{param.name} is not documented"
