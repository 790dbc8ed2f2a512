"""The rule language of ``auto_if``: one grammar, parsed by the registry to validate a rule
and by the executor to evaluate it.

A rule is a condition on the stats that reach a policy::

    stats.accuracy >= 0.9 and not stats["canary.flagged"] == 1
    (stats.tp + stats.fp) / stats.n > 0.5 or stats.f1 > 0.8

Comparisons (``>= <= > < == !=``, chained as in ``0.5 < stats.x < 0.9``), ``and``, ``or``,
``not``, ``+ - * /``, unary ``-`` and ``+``, parentheses, numbers, and stats read as
``stats.NAME``, ``stats.NAME.WITH.DOTS`` or ``stats["NAME"]``. Which stats exist is known
only when the rule runs, so an unknown name is an error of the run, not of the file.

Python's own parser (``ast``) reads the text; only the nodes above are accepted, and the rule
is evaluated by walking them, never by ``eval``.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

HINT = (
    "a rule compares stats.<name> <op> <number> (op one of >=, <=, >, <, ==, !=) and may "
    "combine comparisons with and, or, not, and + - * /"
)

_CMP: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_NOT_COMPARISONS: dict[type[ast.cmpop], str] = {
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}
_BIN: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class RuleError(ValueError):
    """A rule that does not parse, or cannot be evaluated on the stats at hand.

    ``problem`` says what is wrong without naming the rule's field (the registry names it by
    its path); ``str()`` is the whole sentence, ``auto_if '<rule>' <problem>``.
    """

    def __init__(self, rule: str, problem: str) -> None:
        self.rule = rule
        self.problem = problem
        super().__init__(f"auto_if {rule!r} {problem}")


@dataclass(frozen=True)
class Rule:
    """A parsed rule: ``evaluate`` it on a run's stats."""

    text: str
    tree: ast.expr

    def stat_names(self) -> list[str]:
        """The stats the rule reads, in the order it reads them."""
        names: list[str] = []
        todo = [self.tree]
        while todo:
            node = todo.pop()
            name = _stat_name(node)
            if name is not None:
                names.append(name)
            else:
                todo.extend(
                    reversed([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)])
                )
        return names

    def evaluate(self, stats: Mapping[str, float]) -> bool:
        return bool(_eval(self.tree, stats, self.text))


def parse_rule(text: str) -> Rule:
    """Parses and checks a rule; RuleError says what is wrong with it."""
    source = text.strip()
    if not source:
        raise RuleError(text, f"is empty; {HINT}")
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError as e:
        raise RuleError(text, f"is not a valid rule: {e.msg}; {HINT}") from e
    _check_condition(tree, text)
    return Rule(text, tree)


# ----- the check: conditions of comparisons of number-valued terms


def _check_condition(node: ast.expr, rule: str) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_condition(value, rule)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check_condition(node.operand, rule)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMP:
                word = _NOT_COMPARISONS.get(type(op), type(op).__name__)
                raise RuleError(rule, f"is not a valid rule: {word!r} is not a comparison; {HINT}")
        for term in (node.left, *node.comparators):
            _check_term(term, rule)
    else:
        _check_term(node, rule)  # a clear message when the term itself is malformed
        raise RuleError(
            rule,
            f"is not a valid rule: {ast.unparse(node)!r} is a number, not a condition; {HINT}",
        )


def _check_term(node: ast.expr, rule: str) -> None:
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        _check_term(node.left, rule)
        _check_term(node.right, rule)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check_term(node.operand, rule)
    elif isinstance(node, ast.Constant) and _is_number(node.value):
        return
    elif _stat_name(node) is None:
        raise RuleError(rule, f"is not a valid rule: {_describe(node)} is not allowed; {HINT}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _stat_name(node: ast.AST) -> str | None:
    """``stats.a`` -> "a", ``stats.a.b`` -> "a.b", ``stats["a.b"]`` -> "a.b"; else None."""
    if isinstance(node, ast.Subscript):
        key = node.slice
        if (
            isinstance(node.value, ast.Name)
            and node.value.id == "stats"
            and isinstance(key, ast.Constant)
            and isinstance(key.value, str)
        ):
            return key.value
        return None
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if parts and isinstance(node, ast.Name) and node.id == "stats":
        return ".".join(reversed(parts))
    return None


def _describe(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return f"{node.id!r} (stats are read as stats.{node.id} or stats[{node.id!r}])"
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    return repr(ast.unparse(node))


# ----- evaluation


def _eval(node: ast.expr, stats: Mapping[str, float], rule: str) -> Any:
    if isinstance(node, ast.BoolOp):
        # Every operand is evaluated, as the executor always did: a rule that reads a stat
        # nobody recorded fails even when another operand already decides it.
        values = [_eval(v, stats, rule) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, stats, rule)
        if isinstance(node.op, ast.Not):
            return not value
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, stats, rule)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, stats, rule)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, stats, rule), _eval(node.right, stats, rule)
        if isinstance(node.op, ast.Div) and right == 0:
            raise RuleError(rule, f"divides by zero ({ast.unparse(node.right)} is 0)")
        return _BIN[type(node.op)](left, right)
    if isinstance(node, ast.Constant):
        return node.value
    name = _stat_name(node)
    if name is None:  # parse_rule lets no other node through
        raise RuleError(rule, f"is not a valid rule: {_describe(node)} is not allowed; {HINT}")
    if name not in stats:
        known = ", ".join(sorted(k for k in stats if not k.startswith(("sys.", "profile."))))
        raise RuleError(
            rule,
            f"reads stats.{name}, which no upstream node recorded (recorded: {known or 'none'})",
        )
    return stats[name]
