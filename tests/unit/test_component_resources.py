"""A component's ``resources`` in the ION file: validated with line and field, carried into
the definition's proto, and given to Ray as the task's options."""

from __future__ import annotations

import pytest

from relive.errors import InvalidArgument
from relive.executor.components import ray_options
from relive.registry import definition as ion_file
from relive.registry.servicer import definition_to_pb
from tests.unit.memory_policy_context import REPO_ROOT

ION = """\
name: placed
nodes:
  train:
    pipeline:
      components:
        fit:
          call: examples.patterns.steps:fit
          resources: RESOURCES
      outputs: {model: fit}
"""
LINE = ION.splitlines().index("          resources: RESOURCES") + 1


def parse(resources: str) -> dict:
    return ion_file.parse(
        ION.replace("RESOURCES", resources),
        source="ion.yaml",
        ion_id="placed",
        code_path=[str(REPO_ROOT)],
    )


def component(definition: dict) -> dict:
    return definition["nodes"]["train"]["pipeline"]["components"]["fit"]


def test_resources_reach_the_proto_and_the_ray_options() -> None:
    d = parse("{num_cpus: 0.5, num_gpus: 1, memory: 512MiB, custom: {node2: 1}}")
    assert component(d)["resources"] == {
        "num_cpus": 0.5,
        "num_gpus": 1.0,
        "memory_bytes": 512 * 1024**2,
        "custom": {"node2": 1.0},
    }
    pb = definition_to_pb(d).nodes["train"].pipeline.components["fit"]
    assert pb.resources.memory_bytes == 512 * 1024**2 and dict(pb.resources.custom) == {
        "node2": 1.0
    }
    assert ray_options(pb) == {
        "num_cpus": 0.5,
        "num_gpus": 1.0,
        "memory": 512 * 1024**2,
        "resources": {"node2": 1.0},
    }


def test_unset_resources_keep_rays_defaults_and_the_definitions_hash() -> None:
    plain = ION.replace("\n          resources: RESOURCES", "")
    d = ion_file.parse(plain, source="ion.yaml", ion_id="placed", code_path=[str(REPO_ROOT)])
    assert "resources" not in component(d)
    pb = definition_to_pb(d).nodes["train"].pipeline.components["fit"]
    assert ray_options(pb) == {"num_cpus": 1}
    assert parse("{memory: 2GB}")["nodes"]["train"]["pipeline"]["components"]["fit"][
        "resources"
    ] == {"memory_bytes": 2 * 10**9}


@pytest.mark.parametrize(
    ("resources", "field", "problem"),
    [
        ("{cpus: 2}", "resources.cpus", "unknown key 'cpus'"),
        ("{num_cpus: -1}", "resources.num_cpus", "must be at least 0"),
        ("{num_gpus: lots}", "resources.num_gpus", "must be a number"),
        ("{memory: 12 parsecs}", "resources.memory", "a size such as 512MiB"),
        ("{custom: {node2: 0}}", "resources.custom.node2", "must be positive"),
        ("{custom: {CPU: 1}}", "resources.custom.CPU", "Ray's own resource"),
        ("{custom: []}", "resources.custom", "mapping of resource name to amount"),
        ("[1, 2]", "resources", "must be a mapping"),
    ],
)
def test_bad_resources_name_the_line_and_field(resources: str, field: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse(resources)
    assert e.value.field == f"nodes.train.pipeline.components.fit.{field}"
    assert e.value.message.startswith(f"ion.yaml:{LINE}:")
    assert problem in e.value.message
