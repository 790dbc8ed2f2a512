"""Small, safe pieces of the policies: the ``auto_if`` rule language and graph helpers."""

from __future__ import annotations

import ast
import operator
from collections.abc import Iterable, Mapping
from typing import Any

from relive.core.errors import InvalidArgument
from relive.registry.v1 import registry_pb2

_CMP = {
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class RuleError(ValueError):
    pass


def evaluate_rule(rule: str, stats: Mapping[str, float]) -> bool:
    """Evaluates rules like ``stats.accuracy >= 0.9 and stats.f1 > 0.8`` on recorded stats."""
    try:
        tree = ast.parse(rule, mode="eval")
    except SyntaxError as e:
        raise RuleError(f"auto_if {rule!r} is not a valid rule: {e.msg}") from e
    return bool(_eval(tree.body, stats, rule))


def _eval(node: ast.AST, stats: Mapping[str, float], rule: str) -> Any:
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, stats, rule) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _eval(node.operand, stats, rule)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, stats, rule)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, stats, rule)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, stats, rule)
            if type(op) not in _CMP or not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        return _BIN[type(node.op)](_eval(node.left, stats, rule), _eval(node.right, stats, rule))
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "stats"
    ):
        if node.attr not in stats:
            known = ", ".join(sorted(k for k in stats if not k.startswith(("sys.", "profile."))))
            raise RuleError(
                f"auto_if {rule!r} reads stats.{node.attr}, which no upstream "
                f"node recorded (recorded: {known or 'none'})"
            )
        return stats[node.attr]
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "stats"
    ):
        key = node.slice.value if isinstance(node.slice, ast.Constant) else None
        if not isinstance(key, str) or key not in stats:
            raise RuleError(f"auto_if {rule!r} reads a stat no upstream node recorded")
        return stats[key]
    raise RuleError(f"auto_if {rule!r}: only comparisons of stats.NAME with numbers are allowed")


def policy_refs(definition: registry_pb2.IonDefinition, name: str) -> list[str]:
    """Nodes a policy reads besides its incoming edges: a canary's primary and control, an
    ensemble's members, an A/B split's arms."""
    node = definition.nodes[name]
    if node.WhichOneof("kind") != "policy":
        return []
    params: dict[str, Any] = dict(node.policy.params.items())
    refs: list[str] = []
    kind = node.policy.type
    if kind == registry_pb2.POLICY_TYPE_CANARY:
        if "control" in params:
            refs.append(str(params["control"]))
        primary = canary_primary(definition, name)
        if primary:
            refs.append(primary)
    elif kind == registry_pb2.POLICY_TYPE_ENSEMBLE and "members" in params:
        refs += [str(m) for m in params["members"]]
    elif kind == registry_pb2.POLICY_TYPE_AB_SPLIT and "weights" in params:
        refs += [str(k) for k in params["weights"]]
    return refs


def canary_primary(definition: registry_pb2.IonDefinition, name: str) -> str:
    """The node a canary watches: the scoring pipeline fed by the same upstream as the canary."""
    sources = {e.from_node for e in definition.edges if e.to_node == name}
    control = (
        str(definition.nodes[name].policy.params["control"])
        if ("control" in definition.nodes[name].policy.params)
        else ""
    )
    candidates = sorted(
        {
            e.to_node
            for e in definition.edges
            if e.from_node in sources
            and e.to_node not in (name, control)
            and definition.nodes[e.to_node].WhichOneof("kind") == "pipeline"
        }
    )
    return candidates[0] if candidates else ""


def dependencies(definition: registry_pb2.IonDefinition) -> dict[str, set[str]]:
    deps: dict[str, set[str]] = {n: set() for n in definition.nodes}
    for e in definition.edges:
        if e.to_node in deps and e.from_node in deps:
            deps[e.to_node].add(e.from_node)
    for name in definition.nodes:
        for ref in policy_refs(definition, name):
            if ref in deps and ref != name:
                deps[name].add(ref)
    return deps


def topo_order(deps: Mapping[str, Iterable[str]]) -> list[str]:
    """Dependency order, ties broken by name so the order is the same every time."""
    remaining = {k: set(v) for k, v in deps.items()}
    order: list[str] = []
    while remaining:
        ready = sorted(k for k, v in remaining.items() if not v)
        if not ready:
            raise InvalidArgument(
                f"the ION has a cycle among {', '.join(sorted(remaining))}",
                field="definition.edges",
            )
        for k in ready:
            order.append(k)
            del remaining[k]
        for v in remaining.values():
            v.difference_update(ready)
    return order


def downstream(deps: Mapping[str, Iterable[str]], start: Iterable[str]) -> set[str]:
    children: dict[str, set[str]] = {k: set() for k in deps}
    for k, v in deps.items():
        for d in v:
            children.setdefault(d, set()).add(k)
    seen: set[str] = set()
    todo = list(start)
    while todo:
        n = todo.pop()
        for c in children.get(n, ()):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def upstream(deps: Mapping[str, Iterable[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        n = todo.pop()
        for d in deps.get(n, ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen
