"""Freezing a launch's parameters: overrides apply by NODE.COMPONENT.PARAM (NODE.PARAM for a
policy), and an overridden policy parameter must still pass its kind's declaration."""

from __future__ import annotations

import pytest

from relive.errors import InvalidArgument
from relive.executor import launch
from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline.events import struct_to_dict
from tests.unit.memory_policy_context import ion

APP = """
name: test
nodes:
  train:
    pipeline:
      components:
        fit: {call: examples.patterns.steps:fit, params: {model: tree, max_depth: 3}}
      outputs: {model: fit}
  gate:
    policy: approval
    params: {auto_if: "stats.accuracy >= 0.9", timeout_s: 60}
  canary:
    policy: canary
    params: {max_disagreement: 0.1, min_samples: 5}
edges:
  - {from: train, to: gate}
"""


def resolved(overrides: dict[str, str]) -> dict[str, dict]:
    definition = ion(APP)
    spec = pb.LaunchSpec(definition=definition)
    launch.resolve_params(spec, definition, overrides)
    return {k: struct_to_dict(v) for k, v in spec.params.items()}


def test_overrides_are_read_as_yaml_values() -> None:
    params = resolved(
        {"train.fit.max_depth": "5", "gate.auto_if": "stats.accuracy > 0.8 and stats.f1 > 0.5"}
    )
    assert params["train.fit"] == {"model": "tree", "max_depth": 5}
    assert params["gate"] == {"auto_if": "stats.accuracy > 0.8 and stats.f1 > 0.5", "timeout_s": 60}
    # A policy's integers stay valid for their kind (Struct numbers come back as floats).
    assert resolved({"canary.max_disagreement": "0.2"})["canary"]["min_samples"] == 5


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("gate.timeout_s", "0", "--set gate.timeout_s: timeout_s: must be positive, got 0"),
        ("gate.auto_if", "accuracy > 0.9", "--set gate.auto_if: auto_if: 'accuracy > 0.9' is not"),
        ("canary.min_samples", "many", "min_samples: must be an integer, got a string"),
        ("gate.threshold", "1", "gate has no parameter 'threshold'"),
        ("nope.x", "1", "the ION has no node 'nope'"),
    ],
)
def test_a_bad_override_names_the_override(key: str, value: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        resolved({key: value})
    assert e.value.field == f"overrides[{key}]"
    assert words in e.value.message
