"""Freezing a launch spec: the resolved parameters, the datasets' content hashes, the
environment, and the model versions a schedule reuses. The spec alone is enough to launch
the run again."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml
from google.protobuf import struct_pb2

from relive import errors, policies
from relive.executor.execution import intify
from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline import datasets
from relive.pipeline.events import struct_to_dict
from relive.registry.v1 import registry_pb2


def environment(ray_version: str) -> pb.Environment:
    packages = {}
    for dist in importlib.metadata.distributions():
        name = dist.name
        if name:
            packages[name.lower()] = dist.version
    return pb.Environment(
        python_version=sys.version.split()[0],
        packages=packages,
        platform=platform.platform(),
        ray_version=ray_version,
    )


def parse_value(text: str) -> Any:
    """A ``--set`` value, read as YAML (``0.1`` is a number, ``[a, b]`` a list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def resolve_params(
    spec: pb.LaunchSpec,
    definition: registry_pb2.IonDefinition,
    overrides: Mapping[str, str],
) -> None:
    """The definition's parameters with the overrides applied, into ``spec.params``."""
    resolved: dict[str, dict[str, Any]] = {}
    for node_id, node in definition.nodes.items():
        if node.WhichOneof("kind") == "pipeline":
            for comp_id, comp in node.pipeline.components.items():
                resolved[f"{node_id}.{comp_id}"] = struct_to_dict(comp.params)
        elif node.WhichOneof("kind") == "policy":
            resolved[node_id] = struct_to_dict(node.policy.params)
    policy_overrides: dict[str, str] = {}  # policy node -> the first key that overrides it
    for key, text in sorted(overrides.items()):
        target, param = _override_target(key, definition, resolved)
        resolved[target][param] = parse_value(text)
        if target in definition.nodes:
            policy_overrides.setdefault(target, key)
    for target, key in policy_overrides.items():  # still valid for the policy's kind?
        _check_policy_override(key, definition.nodes[target].policy, resolved[target])
    for key, values in resolved.items():
        s = struct_pb2.Struct()
        s.update(values)
        spec.params[key].CopyFrom(s)


def _override_target(
    key: str, definition: registry_pb2.IonDefinition, resolved: Mapping[str, Mapping[str, Any]]
) -> tuple[str, str]:
    field = f"overrides[{key}]"
    target, _, param = key.rpartition(".")
    if not target or not param:
        raise errors.InvalidArgument(
            f"--set {key}: use NODE.COMPONENT.PARAM (or NODE.PARAM for a policy)",
            field=field,
        )
    if target not in resolved:
        node_id = target.split(".")[0]
        if node_id not in definition.nodes:
            raise errors.InvalidArgument(
                f"--set {key}: the ION has no node {node_id!r} "
                f"(nodes: {', '.join(sorted(definition.nodes))})",
                field=field,
            )
        raise errors.InvalidArgument(
            f"--set {key}: node {node_id!r} has no component {target.partition('.')[2]!r}",
            field=field,
        )
    if param not in resolved[target]:
        known = ", ".join(sorted(resolved[target])) or "none"
        raise errors.InvalidArgument(
            f"--set {key}: {target} has no parameter {param!r} (its parameters: {known})",
            field=field,
        )
    return target, param


def _check_policy_override(
    key: str, policy: registry_pb2.Policy, values: Mapping[str, Any]
) -> None:
    """An overridden policy parameter gets the registry's checks (its kind's declaration)."""
    kind = policies.by_enum(policy.type)
    if kind is None:
        return

    def fail(path: tuple[str | int, ...], problem: str) -> Exception:
        where = ".".join(str(p) for p in path)
        return errors.InvalidArgument(f"--set {key}: {where}: {problem}", field=f"overrides[{key}]")

    kind.validate(intify(dict(values)), fail)


def resolve_datasets(spec: pb.LaunchSpec) -> None:
    """Records the URI and content hash of every dataset a parameter names."""
    seen: set[str] = set()
    for key in sorted(spec.params):
        for param, value in struct_to_dict(spec.params[key]).items():
            if not datasets.looks_like_dataset(param, value):
                continue
            uri = datasets.normalize(str(value))
            if uri in seen:
                continue
            seen.add(uri)
            try:
                digest, size = datasets.content_hash(uri)
            except (OSError, ValueError) as e:
                raise errors.InvalidArgument(
                    f"{key}.{param}: dataset {value!r} cannot be read: {e}",
                    field=f"params[{key}.{param}]",
                ) from e
            spec.dataset_refs.append(
                registry_pb2.DatasetRef(uri=uri, sha256=digest, size_bytes=size)
            )


def pin_scheduled(spec: pb.LaunchSpec, earlier_runs: Callable[[], Iterable[pb.Run]]) -> None:
    """Nodes whose schedule skips this launch reuse the newest models they made before;
    ``earlier_runs()`` gives the ION's runs, newest first."""
    for node_id, node in spec.definition.nodes.items():
        every = node.schedule.every_launches
        if every <= 1 or (spec.launch_number - 1) % every == 0:
            continue
        for run in earlier_runs():
            nr = next((n for n in run.nodes if n.node == node_id), None)
            if nr and nr.state == pb.RUN_STATE_SUCCEEDED and nr.outputs:
                for out, version in nr.outputs.items():
                    spec.pinned_models[f"{node_id}.{out}"] = version
                break
