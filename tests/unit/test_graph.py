"""The ION's graph as the executor schedules it: dependencies (edges and the nodes policies
name), dependency order, cycles, and what lies upstream and downstream."""

from __future__ import annotations

import pytest

from relive.errors import InvalidArgument
from relive.executor import graph
from tests.unit.memory_policy_context import ion

STEPS = "examples.patterns.steps"

APP = f"""
name: test
nodes:
  train:
    pipeline:
      components:
        load: {{call: {STEPS}:load}}
        fit: {{call: {STEPS}:fit, after: [load]}}
        evaluate: {{call: {STEPS}:evaluate, after: [fit]}}
        report: {{call: {STEPS}:evaluate, after: [load]}}
      outputs: {{model: fit}}
  serving:
    pipeline:
      components: {{fit: {{call: {STEPS}:fit}}}}
      outputs: {{model: fit}}
  pick:
    policy: champion_challenger
    params: {{champion: serving, challenger: train, metric: accuracy}}
  gate:
    policy: approval
  infer:
    pipeline:
      components: {{score: {{call: {STEPS}:score}}}}
  control:
    pipeline:
      components: {{score: {{call: {STEPS}:score}}}}
  canary:
    policy: canary
    params: {{control: control, max_disagreement: 0.1}}
edges:
  - {{from: pick, to: gate}}
  - {{from: gate, to: infer}}
  - {{from: gate, to: canary}}
  - {{from: serving, to: control}}
"""


def test_dependencies_are_edges_and_the_nodes_policies_read() -> None:
    deps = graph.dependencies(ion(APP))
    assert deps == {
        "train": set(),
        "serving": set(),
        "pick": {"serving", "train"},  # named by its params, no edge needed
        "gate": {"pick"},
        "infer": {"gate"},
        "control": {"serving"},
        "canary": {"gate", "control", "infer"},  # infer: the primary it watches
    }


def test_dependency_order_breaks_ties_by_name() -> None:
    order = graph.topo_order(graph.dependencies(ion(APP)))
    assert order == ["serving", "train", "control", "pick", "gate", "infer", "canary"]
    assert graph.topo_order({"b": set(), "a": set(), "c": {"a", "b"}}) == ["a", "b", "c"]


def test_a_cycle_is_invalid_naming_its_nodes() -> None:
    with pytest.raises(InvalidArgument) as e:
        graph.topo_order({"a": {"c"}, "b": {"a"}, "c": {"b"}, "d": set()})
    assert e.value.field == "definition.edges"
    assert "the ION has a cycle among a, b, c" in e.value.message


def test_upstream_and_downstream() -> None:
    deps = graph.dependencies(ion(APP))
    assert graph.upstream(deps, "infer") == {"gate", "pick", "serving", "train"}
    assert graph.upstream(deps, "train") == set()
    assert graph.downstream(deps, ["train"]) == {"pick", "gate", "infer", "canary"}
    assert graph.downstream(deps, ["control", "infer"]) == {"canary"}


def test_components_run_after_everything_they_depend_on() -> None:
    pipeline = ion(APP).nodes["train"].pipeline
    assert graph.components_order(pipeline) == ["load", "fit", "report", "evaluate"]
    assert graph.components_order(pipeline, exclude="fit") == ["evaluate", "load", "report"]
    assert graph.ancestors(pipeline, "evaluate") == ["fit", "load"]
    assert graph.ancestors(pipeline, "load") == []
