"""The ION file: its YAML schema, and validation that names the line and field of every error.

An ION file is a YAML mapping::

    name: churn                  # optional; the ION id (AIP-122: [a-z][a-z0-9-]*, max 63)
    retention_days: 7            # optional, 1..3650, default 7
    nodes:                       # required; node ids match [a-z][a-z0-9_]* (max 63)
      train:
        pipeline:
          components:            # required; component ids match [a-z][a-z0-9_]*
            load: {call: examples.churn.steps:load, params: {dataset: breast_cancer}}
            fit:  {call: examples.churn.steps:fit, after: [load], params: {C: 1.0}}
            # a component in another language: {command: [node, score.js], image: optional}
            # its Ray task's needs (optional): resources: {num_cpus: 2, custom: {node2: 1}}
          outputs: {model: fit}  # optional; output name -> the component that makes it
        schedule: {every_launches: 3}      # optional; also every_seconds, every_batches
        streaming: {batches: 20, batch_size: 32, score: score}   # optional; pipelines only
      approve:
        policy: approval         # a kind of relive.policies.KINDS
        params: {auto_if: "stats.accuracy >= 0.9", timeout_s: 600}
    edges:                       # optional
      - {from: train, to: approve, carries: model}   # carries defaults to "model"

Policy kinds and their parameters are declared in ``relive.policies`` (one module per kind,
documented in docs/ion-schema.md); this module validates with those declarations.

Pipelines produce their ``outputs`` keys; policies produce ``model``. An edge must carry
something its ``from`` node produces, and the edges must not form a cycle. Every ``call``
must name a top-level function, class or variable of a module found on the registry's code
path; the module is read with ``ast``, never imported, so no user code runs here.

Every error is an ``InvalidArgument`` whose ``field`` is the path of the culprit, such as
``nodes.train.pipeline.components.fit.call``, and whose message starts with
``<file>:<line>:``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from relive import policies
from relive.code import find_module_file
from relive.core.names import check_id
from relive.errors import InvalidArgument
from relive.policies.params import LOCAL_ID as LOCAL_ID  # node ids; service.py checks them too
from relive.policies.params import integer_problem, local_id_problem, number_problem
from relive.policies.params import kind_of as _kind

DEFAULT_RETENTION_DAYS = 7
MAX_RETENTION_DAYS = 3650
MAX_YAML_BYTES = 1024 * 1024
# Values an ION file may expand to: aliases can make a small file expand without bound
# ("billion laughs"), or refer to themselves.
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64

Path_ = tuple[str | int, ...]


@dataclass
class _Doc:
    """Plain values composed from YAML, with the position of every value by its path."""

    source: str
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    values: int = 0

    def line(self, path: Path_) -> tuple[int, int]:
        # The closest enclosing value with a known position.
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path, (1, 1))

    def error(self, path: Path_, problem: str) -> InvalidArgument:
        line, column = self.line(path)
        dotted = ".".join(str(p) for p in path) or "definition_yaml"
        where = ""
        if len(path) >= 2 and path[0] == "nodes":
            where = f"node {path[1]!r}: "
        elif len(path) >= 2 and path[0] == "edges":
            where = f"edge {path[1]}: "
        metadata = {"line": str(line), "column": str(column), "source": self.source}
        if len(path) >= 2 and path[0] == "nodes":
            metadata["node"] = str(path[1])
        return InvalidArgument(
            f"{self.source}:{line}: {where}{dotted}: {problem}", field=dotted, metadata=metadata
        )


def _compose(text: str, source: str) -> tuple[Any, _Doc]:
    doc = _Doc(source)
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            value = _construct(loader, root, (), doc) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(p for p in (e.context, e.problem) if p) or "malformed YAML"
        raise InvalidArgument(
            f"{source}:{line}:{column}: malformed YAML: {problem}",
            field="definition_yaml",
            metadata={"line": str(line), "column": str(column), "source": source},
        ) from e
    except yaml.YAMLError as e:
        raise InvalidArgument(
            f"{source}: malformed YAML: {e}", field="definition_yaml", metadata={"source": source}
        ) from e
    except RecursionError as e:
        raise InvalidArgument(
            f"{source}: the YAML nests too deeply, or an alias refers to itself",
            field="definition_yaml",
            metadata={"source": source},
        ) from e
    return value, doc


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, doc: _Doc) -> Any:
    doc.values += 1
    if doc.values > MAX_YAML_VALUES:
        raise doc.error(path, f"the YAML expands to more than {MAX_YAML_VALUES} values (aliases?)")
    if len(path) > MAX_YAML_DEPTH:
        # Deep enough for any ION; stops an alias that refers to itself before RecursionError.
        raise doc.error(path, f"the YAML nests deeper than {MAX_YAML_DEPTH} levels (aliases?)")
    doc.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                doc.marks[(*path, str(key))] = (key_node.start_mark.line + 1, 1)
                raise doc.error((*path, str(key)), f"keys must be strings, got {key!r}")
            if key in out:
                doc.marks[(*path, key)] = (
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
                raise doc.error((*path, key), "duplicate key")
            out[key] = _construct(loader, value_node, (*path, key), doc)
            # Point errors about a key's value at the key's own line.
            doc.marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, (*path, i), doc) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


# ---------------------------------------------------------------------------- checks


def _mapping(doc: _Doc, value: Any, path: Path_, *, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise doc.error(path, f"must be a mapping, got {_kind(value)}")
    for key in value:
        if key not in allowed:
            raise doc.error(
                (*path, key), f"unknown key {key!r}; expected one of: {', '.join(allowed)}"
            )
    return value


def _local_id(doc: _Doc, value: Any, path: Path_, what: str) -> str:
    problem = local_id_problem(value, what)
    if problem:
        raise doc.error(path, problem)
    return str(value)


def _int(doc: _Doc, value: Any, path: Path_, *, minimum: int = 1, maximum: int = 2**31 - 1) -> int:
    problem = integer_problem(value, minimum=minimum, maximum=maximum)
    if problem:
        raise doc.error(path, problem)
    return int(value)


def _number(doc: _Doc, value: Any, path: Path_, *, positive: bool = False) -> float:
    problem = number_problem(value, positive=positive)
    if problem:
        raise doc.error(path, problem)
    return float(value) if isinstance(value, float) else value


def _string(doc: _Doc, value: Any, path: Path_) -> str:
    if not isinstance(value, str) or not value:
        raise doc.error(path, f"must be a non-empty string, got {_kind(value)}")
    return value


def _json_value(doc: _Doc, value: Any, path: Path_) -> Any:
    """Parameters travel as google.protobuf.Struct: JSON values only."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise doc.error(path, "must be a finite number")
        return value
    if isinstance(value, list):
        return [_json_value(doc, v, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _json_value(doc, v, (*path, k)) for k, v in value.items()}
    raise doc.error(path, f"must be a JSON value (string, number, list, mapping), got {value!r}")


def _params(doc: _Doc, value: Any, path: Path_) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise doc.error(path, f"must be a mapping, got {_kind(value)}")
    out = _json_value(doc, value, path)
    assert isinstance(out, dict)
    return out


# ------------------------------------------------------------------------- the parse


def parse(
    text: str,
    *,
    source: str = "",
    ion_id: str = "",
    code_path: Sequence[str] | None = (),
) -> dict[str, Any]:
    """Parses and validates an ION file; returns its canonical definition.

    The canonical definition is a plain JSON-able dict (see ``canonical_json``). ``ion_id``,
    when given, must match the file's ``name`` (or stands in for a missing one).
    ``code_path=None`` checks each ``call``'s form but not that it imports here: for a
    revision restored from an export, whose code comes with the export's code snapshots.
    """
    source = source or "definition_yaml"
    if len(text.encode()) > MAX_YAML_BYTES:
        raise InvalidArgument(
            f"definition_yaml is larger than {MAX_YAML_BYTES} bytes", field="definition_yaml"
        )
    raw, doc = _compose(text, source)
    if raw is None:
        raise doc.error((), "the ION file is empty")
    top = _mapping(doc, raw, (), allowed=("name", "retention_days", "nodes", "edges"))

    name = top.get("name", ion_id)
    if "name" in top:
        if not isinstance(name, str):
            raise doc.error(("name",), f"must be a string, got {_kind(name)}")
        try:
            check_id(name, "name")
        except InvalidArgument as e:
            raise doc.error(("name",), e.message.removeprefix("name ")) from e
        if ion_id and name != ion_id:
            raise doc.error(("name",), f"is {name!r}, but the request is for ION {ion_id!r}")
    if not name:
        raise doc.error(("name",), "is required")

    retention = top.get("retention_days", DEFAULT_RETENTION_DAYS)
    retention = _int(doc, retention, ("retention_days",), maximum=MAX_RETENTION_DAYS)

    if "nodes" not in top:
        raise doc.error(("nodes",), "is required")
    raw_nodes = top["nodes"]
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        raise doc.error(("nodes",), "must be a mapping of at least one node")
    nodes: dict[str, Any] = {}
    for node_id, raw_node in raw_nodes.items():
        _local_id(doc, node_id, ("nodes", node_id), "node id")
        nodes[node_id] = _node(doc, raw_node, ("nodes", node_id), code_path)
    for node_id, node in nodes.items():
        _check_policy_refs(doc, node_id, node, nodes)

    at: dict[tuple[str, str], int] = {}
    edges = _edges(doc, top.get("edges"), nodes, at)
    _check_acyclic(doc, edges, at)
    return {"name": name, "retention_days": retention, "nodes": nodes, "edges": edges}


def _node(doc: _Doc, raw: Any, path: Path_, code_path: Sequence[str] | None) -> dict[str, Any]:
    node = _mapping(
        doc, raw, path, allowed=("pipeline", "policy", "params", "schedule", "streaming")
    )
    if ("pipeline" in node) == ("policy" in node):
        raise doc.error(path, "a node needs exactly one of 'pipeline' or 'policy'")
    out: dict[str, Any] = {}
    if "pipeline" in node:
        if "params" in node:
            raise doc.error(
                (*path, "params"), "params belong to a policy node, or to a pipeline's components"
            )
        out["pipeline"] = _pipeline(doc, node["pipeline"], (*path, "pipeline"), code_path)
        if "schedule" in node:
            out["schedule"] = _schedule(doc, node["schedule"], (*path, "schedule"))
        if "streaming" in node:
            out["streaming"] = _streaming(
                doc, node["streaming"], (*path, "streaming"), out["pipeline"]
            )
    else:
        for key in ("schedule", "streaming"):
            if key in node:
                raise doc.error((*path, key), f"{key} applies only to pipeline nodes")
        out["policy"] = _policy(doc, node["policy"], node.get("params"), path)
    return out


def _pipeline(doc: _Doc, raw: Any, path: Path_, code_path: Sequence[str] | None) -> dict[str, Any]:
    pipeline = _mapping(doc, raw, path, allowed=("components", "outputs"))
    raw_components = pipeline.get("components")
    if not isinstance(raw_components, dict) or not raw_components:
        raise doc.error((*path, "components"), "must be a mapping of at least one component")
    components: dict[str, Any] = {}
    for cid, raw_c in raw_components.items():
        cpath = (*path, "components", cid)
        _local_id(doc, cid, cpath, "component id")
        components[cid] = _component(doc, raw_c, cpath, code_path)
    for cid, component in components.items():
        for i, dep in enumerate(component["after"]):
            if dep not in components:
                raise doc.error(
                    (*path, "components", cid, "after", i),
                    f"component {cid!r} runs after {dep!r}, which is not a component of this "
                    f"pipeline (components: {', '.join(sorted(components))})",
                )
    graph = {cid: list(c["after"]) for cid, c in components.items()}
    if cycle := _find_cycle(graph):
        raise doc.error(
            (*path, "components", cycle[0], "after"),
            f"components form a cycle: {' -> '.join(reversed(cycle))} -> {cycle[-1]}",
        )
    outputs: dict[str, str] = {}
    raw_outputs = pipeline.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, dict):
            raise doc.error((*path, "outputs"), f"must be a mapping, got {_kind(raw_outputs)}")
        for out_name, comp in raw_outputs.items():
            opath = (*path, "outputs", out_name)
            _local_id(doc, out_name, opath, "output name")
            if not isinstance(comp, str) or comp not in components:
                raise doc.error(
                    opath,
                    f"output {out_name!r} names component {comp!r}, which is not a component of "
                    f"this pipeline (components: {', '.join(sorted(components))})",
                )
            outputs[out_name] = comp
    return {"components": components, "outputs": outputs}


def _component(doc: _Doc, raw: Any, path: Path_, code_path: Sequence[str] | None) -> dict[str, Any]:
    c = _mapping(
        doc, raw, path, allowed=("call", "command", "after", "params", "image", "resources")
    )
    if ("call" in c) == ("command" in c):
        raise doc.error(path, "a component needs exactly one of 'call' or 'command'")
    out: dict[str, Any] = {"call": "", "command": [], "after": [], "params": {}, "image": ""}
    if "call" in c:
        call = c["call"]
        if not isinstance(call, str):
            raise doc.error((*path, "call"), f"must be a string, got {_kind(call)}")

        def fail(problem: str) -> InvalidArgument:
            return doc.error((*path, "call"), problem)

        if code_path is None:
            if not CALL.match(call):
                raise fail(f"{call!r} is not of the form 'package.module:function'")
        else:
            check_call(call, code_path, fail)
        out["call"] = call
        if "image" in c:
            raise doc.error((*path, "image"), "image applies only to command components")
    else:
        command = c["command"]
        if isinstance(command, str):
            command = command.split()
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str | int | float) for a in command)
        ):
            raise doc.error((*path, "command"), "must be a non-empty list of strings (an argv)")
        out["command"] = [str(a) for a in command]
        if "image" in c:
            out["image"] = _string(doc, c["image"], (*path, "image"))
    after = c.get("after", [])
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list):
        raise doc.error((*path, "after"), f"must be a list of component ids, got {_kind(after)}")
    for i, dep in enumerate(after):
        _local_id(doc, dep, (*path, "after", i), "component id")
    out["after"] = sorted(set(after))
    out["params"] = _params(doc, c.get("params"), (*path, "params"))
    if "resources" in c:  # only when given, so that definitions without it keep their hash
        out["resources"] = _resources(doc, c["resources"], (*path, "resources"))
    return out


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def _memory_bytes(doc: _Doc, value: Any, path: Path_) -> int:
    """Bytes, as a number or a string with a unit: 512MiB, 2G, 1.5GB."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _MEMORY.match(value) if isinstance(value, str) else None
    if match is None:
        raise doc.error(
            path, f"must be a number of bytes or a size such as 512MiB or 2GB, got {value!r}"
        )
    unit = (match.group(2) or "").lower()
    base = 1024 if unit.endswith("i") else 1000  # MiB = 1024², MB = 1000²
    return int(float(match.group(1)) * base ** _POWERS[unit.removesuffix("i")])


def _resources(doc: _Doc, raw: Any, path: Path_) -> dict[str, Any]:
    """What the component's Ray task asks for: CPUs, GPUs, memory and custom resources."""
    r = _mapping(doc, raw, path, allowed=("num_cpus", "num_gpus", "memory", "custom"))
    out: dict[str, Any] = {}
    for key in ("num_cpus", "num_gpus"):
        if key in r:
            problem = number_problem(r[key], low=0)
            if problem:
                raise doc.error((*path, key), problem)
            out[key] = float(r[key])
    if "memory" in r:
        out["memory_bytes"] = _memory_bytes(doc, r["memory"], (*path, "memory"))
    if "custom" in r:
        custom = r["custom"]
        if not isinstance(custom, dict) or not custom:
            raise doc.error(
                (*path, "custom"), f"must be a mapping of resource name to amount, got {custom!r}"
            )
        out["custom"] = {}
        for name, amount in custom.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:/-]{1,128}", name):
                raise doc.error(
                    (*path, "custom"), f"resource name {name!r} must match [A-Za-z0-9_.:/-]+"
                )
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise doc.error(
                    (*path, "custom", name),
                    f"{name!r} is Ray's own resource; use num_cpus, num_gpus or memory",
                )
            problem = number_problem(amount, positive=True)
            if problem:
                raise doc.error((*path, "custom", name), problem)
            out["custom"][name] = float(amount)
    return out


def resources_to_pb(resources: dict[str, Any], out: Any) -> None:
    """Fills a ``registry_pb2.Resources`` from a component's validated ``resources``."""
    out.num_cpus = resources.get("num_cpus", 0.0)
    out.num_gpus = resources.get("num_gpus", 0.0)
    out.memory_bytes = resources.get("memory_bytes", 0)
    out.custom.update(resources.get("custom", {}))


def _schedule(doc: _Doc, raw: Any, path: Path_) -> dict[str, Any]:
    s = _mapping(doc, raw, path, allowed=("every_launches", "every_seconds", "every_batches"))
    if not s:
        raise doc.error(path, "needs one of every_launches, every_seconds or every_batches")
    out: dict[str, Any] = {}
    if "every_launches" in s:
        out["every_launches"] = _int(doc, s["every_launches"], (*path, "every_launches"))
    if "every_seconds" in s:
        out["every_seconds"] = float(
            _number(doc, s["every_seconds"], (*path, "every_seconds"), positive=True)
        )
    if "every_batches" in s:
        out["every_batches"] = _int(doc, s["every_batches"], (*path, "every_batches"))
    return out


def _streaming(doc: _Doc, raw: Any, path: Path_, pipeline: dict[str, Any]) -> dict[str, Any]:
    s = _mapping(doc, raw, path, allowed=("batches", "batch_size", "score"))
    components = pipeline["components"]
    out: dict[str, Any] = {
        "batches": _int(doc, s.get("batches", 10), (*path, "batches")),
        "batch_size": _int(doc, s.get("batch_size", 32), (*path, "batch_size")),
    }
    score = s.get("score")
    if score is None:
        if len(components) != 1:
            raise doc.error(
                (*path, "score"), "is required when the pipeline has more than one component"
            )
        score = next(iter(components))
    if not isinstance(score, str) or score not in components:
        raise doc.error(
            (*path, "score"),
            f"names {score!r}, which is not a component of this pipeline "
            f"(components: {', '.join(sorted(components))})",
        )
    out["score"] = score
    return out


def _policy(doc: _Doc, kind: Any, raw_params: Any, path: Path_) -> dict[str, Any]:
    """Checks a policy node with its kind's declaration (``relive.policies``)."""
    declared = policies.by_name(kind) if isinstance(kind, str) else None
    if declared is None:
        raise doc.error(
            (*path, "policy"),
            f"unknown policy type {kind!r}; expected one of: {', '.join(policies.names())}",
        )
    ppath = (*path, "params")
    params = _params(doc, raw_params, ppath)
    declared.validate(params, lambda sub, problem: doc.error((*ppath, *sub), problem))
    return {"type": kind, "params": params}


def _check_policy_refs(
    doc: _Doc, node_id: str, node: dict[str, Any], nodes: dict[str, Any]
) -> None:
    """Node ids named inside policy parameters must exist."""
    policy = node.get("policy")
    if not policy:
        return
    ppath: Path_ = ("nodes", node_id, "params")
    declared = policies.by_name(policy["type"])
    assert declared is not None  # _policy checked it
    for sub, ref in declared.node_refs(policy["params"]):
        if ref not in nodes:
            raise doc.error((*ppath, *sub), f"names node {ref!r}, which is not a node of this ION")


def _edges(
    doc: _Doc, raw: Any, nodes: dict[str, Any], at: dict[tuple[str, str], int]
) -> list[dict[str, str]]:
    """Checks the edges; ``at`` gets each (from, to)'s index in the file, for error lines."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise doc.error(("edges",), f"must be a list of edges, got {_kind(raw)}")
    edges: list[dict[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for i, raw_edge in enumerate(raw):
        path: Path_ = ("edges", i)
        e = _mapping(doc, raw_edge, path, allowed=("from", "to", "carries"))
        ends: dict[str, str] = {}
        for end in ("from", "to"):
            if end not in e:
                raise doc.error((*path, end), "is required")
            ref = e[end]
            if not isinstance(ref, str) or ref not in nodes:
                raise doc.error(
                    (*path, end),
                    f"names node {ref!r}, which is not a node of this ION "
                    f"(nodes: {', '.join(sorted(nodes))})",
                )
            ends[end] = ref
        carries = e.get("carries", "model")
        if not isinstance(carries, str):
            raise doc.error((*path, "carries"), f"must be a string, got {_kind(carries)}")
        producer = nodes[ends["from"]]
        produced = sorted(producer["pipeline"]["outputs"]) if "pipeline" in producer else ["model"]
        if carries not in produced:
            what = ", ".join(produced) if produced else "nothing (it has no outputs)"
            raise doc.error(
                (*path, "carries"),
                f"carries {carries!r}, but node {ends['from']!r} produces {what}",
            )
        key = (ends["from"], ends["to"], carries)
        if key in seen:
            raise doc.error(path, "duplicate edge")
        seen.add(key)
        at.setdefault((ends["from"], ends["to"]), i)
        edges.append({"from": ends["from"], "to": ends["to"], "carries": carries})
    return sorted(edges, key=lambda x: (x["from"], x["to"], x["carries"]))


def _check_acyclic(doc: _Doc, edges: list[dict[str, str]], at: dict[tuple[str, str], int]) -> None:
    graph: dict[str, list[str]] = {}
    for e in edges:
        graph.setdefault(e["from"], []).append(e["to"])
    cycle = _find_cycle(graph)
    if cycle:
        # Point at the cycle's edge written last in the file: the likeliest to be new.
        pairs = [(cycle[i], cycle[(i + 1) % len(cycle)]) for i in range(len(cycle))]
        index = max(at.get(pair, 0) for pair in pairs)
        raise doc.error(("edges", index), f"edges form a cycle: {' -> '.join([*cycle, cycle[0]])}")


def _find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """Returns the nodes of one cycle in order (a -> b -> ... -> a), or [] when acyclic."""
    white, grey, black = 0, 1, 2
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        color[n] = grey
        stack.append(n)
        for m in sorted(graph.get(n, [])):
            c = color.get(m, white)
            if c == grey:
                return stack[stack.index(m) :]
            if c == white and (found := visit(m)):
                return found
        stack.pop()
        color[n] = black
        return []

    for n in sorted(graph):
        if color.get(n, white) == white and (found := visit(n)):
            return found
    return []


# --------------------------------------------------------------------- call resolution


def top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                names.update(t.id for t in ast.walk(target) if isinstance(t, ast.Name))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names.add(stmt.target.id)
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
    return names


CALL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def check_call(call: str, code_path: Sequence[str], error: Any) -> None:
    """Checks that ``module:function`` names something importable, reading source only."""
    if not CALL.match(call):
        raise error(f"{call!r} is not of the form 'package.module:function'")
    module, attr = call.split(":")
    # The code path first, then the registry's own environment (installed packages).
    origin = find_module_file(module, code_path) if code_path else None
    origin = origin or find_module_file(module, ())
    if origin is None:
        where = ", ".join(code_path) or "the registry's code path"
        raise error(f"cannot import {call!r}: no module {module!r} on the code path ({where})")
    if origin.suffix != ".py":
        return  # compiled extension: its names cannot be read without importing it
    try:
        tree = ast.parse(origin.read_bytes(), filename=str(origin))
    except (SyntaxError, ValueError, OSError) as e:
        raise error(f"cannot import {call!r}: {origin} does not parse: {e}") from e
    if attr not in top_level_names(tree):
        raise error(
            f"cannot import {call!r}: module {module!r} ({origin}) has no top-level {attr!r}"
        )


def canonical_json(definition: dict[str, Any]) -> str:
    return json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def definition_sha256(definition: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(definition).encode()).hexdigest()
