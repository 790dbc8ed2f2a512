"""Declarations of policy parameters: their types, defaults, ranges and node references.

The registry validates an ION's policy parameters with these declarations, and the executor
fills in their defaults when it runs a policy, so both read the same declaration. The
messages are the registry's: a ``Fail`` callback turns (path under ``params``, problem) into
the error it raises, naming the file, line and field.

Written by hand rather than with a schema library (jsonschema, pydantic): the checks are a
few lines each, and the messages must stay the registry's own, word for word, with the path
of the value (a share inside ``weights``, a member of ``members``) for its line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relive.policies.rules import RuleError, parse_rule

Path = tuple[str | int, ...]
# Builds the error for ``problem`` at ``path`` (relative to the policy's params); raised.
Fail = Callable[[Path, str], Exception]
Check = Callable[[Any, Path, Fail], None]
Refs = Callable[[Any, Path], list[tuple[Path, str]]]

# Node ids (and component ids and output names): [a-z][a-z0-9_]*, at most 63 characters.
LOCAL_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
LOCAL_ID_MAX = 63
STAT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]{0,199}$")


def kind_of(value: Any) -> str:
    """What a YAML value is, in words, for messages such as 'must be a number, got a list'."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def local_id_problem(value: Any, what: str) -> str | None:
    """Why ``value`` is not a valid node id (``what`` names it in the message), or None."""
    if not isinstance(value, str):
        return f"{what} must be a string, got {kind_of(value)}"
    if len(value) > LOCAL_ID_MAX:
        return f"{what} is {len(value)} characters long; the limit is {LOCAL_ID_MAX}"
    if not LOCAL_ID.match(value):
        return (
            f"{what} {value!r} is malformed: use lowercase letters, digits and '_', "
            "starting with a letter"
        )
    return None


def number_problem(
    value: Any, *, positive: bool = False, low: float | None = None, high: float | None = None
) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"must be a number, got {kind_of(value)}"
    if positive and value <= 0:
        return f"must be positive, got {value}"
    if low is not None and high is not None and not low <= value <= high:
        return f"must be between {low:g} and {high:g}, got {value}"
    if low is not None and high is None and value < low:
        return f"must be at least {low:g}, got {value}"
    return None


def integer_problem(value: Any, *, minimum: int = 1, maximum: int = 2**31 - 1) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {kind_of(value)}"
    if value < minimum:
        return f"must be at least {minimum}, got {value}"
    if value > maximum:
        return f"must be at most {maximum}, got {value}"
    return None


def _no_refs(value: Any, path: Path) -> list[tuple[Path, str]]:
    return []


@dataclass(frozen=True)
class Param:
    """One declared parameter of a policy kind."""

    name: str
    type: str  # what it is, in the words of docs/ion-schema.md
    check: Check
    required: bool = False
    # Filled in by the executor when the ION leaves it out; None: no default (or one derived
    # at run time, which ``doc`` describes).
    default: Any = None
    doc: str = ""
    refs: Refs = field(default=_no_refs)  # the node ids the value names, by path


def _fails(problem: str | None, path: Path, fail: Fail) -> None:
    if problem:
        raise fail(path, problem)


def number(
    name: str,
    *,
    required: bool = False,
    default: float | None = None,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
    doc: str = "",
) -> Param:
    def check(value: Any, path: Path, fail: Fail) -> None:
        _fails(number_problem(value, positive=positive, low=low, high=high), path, fail)

    return Param(name, "number", check, required, default, doc)


def integer(
    name: str,
    *,
    minimum: int = 1,
    required: bool = False,
    default: int | None = None,
    doc: str = "",
) -> Param:
    def check(value: Any, path: Path, fail: Fail) -> None:
        _fails(integer_problem(value, minimum=minimum), path, fail)

    return Param(name, "integer", check, required, default, doc)


def choice(
    name: str, options: Sequence[str], *, noun: str = "", default: str | None = None, doc: str = ""
) -> Param:
    """One of ``options``. With ``noun`` the message is "unknown <noun> 'x'; expected one of:
    ..."; without, "must be 'a' or 'b'"."""

    def check(value: Any, path: Path, fail: Fail) -> None:
        if value in options:
            return
        if noun:
            raise fail(path, f"unknown {noun} {value!r}; expected one of: " + ", ".join(options))
        raise fail(path, "must be " + " or ".join(repr(o) for o in options))

    return Param(name, "choice", check, False, default, doc)


def node(name: str, *, what: str = "node", required: bool = False, doc: str = "") -> Param:
    """A node id of the same ION: checked for syntax here, for existence by the registry."""

    def check(value: Any, path: Path, fail: Fail) -> None:
        _fails(local_id_problem(value, what), path, fail)

    def refs(value: Any, path: Path) -> list[tuple[Path, str]]:
        return [(path, value)]

    return Param(name, "node", check, required, None, doc, refs)


def nodes(name: str, *, what: str = "node", doc: str = "") -> Param:
    """A list of node ids of the same ION."""

    def check(value: Any, path: Path, fail: Fail) -> None:
        if not isinstance(value, list):
            raise fail(path, "must be a list of node ids")
        for i, item in enumerate(value):
            _fails(local_id_problem(item, what), (*path, i), fail)

    def refs(value: Any, path: Path) -> list[tuple[Path, str]]:
        return [((*path, i), v) for i, v in enumerate(value)]

    return Param(name, "nodes", check, False, None, doc, refs)


def numbers(name: str, *, doc: str = "") -> Param:
    """A list of positive numbers."""

    def check(value: Any, path: Path, fail: Fail) -> None:
        if not isinstance(value, list):
            raise fail(path, "must be a list of positive numbers")
        for i, item in enumerate(value):
            _fails(number_problem(item, positive=True), (*path, i), fail)

    return Param(name, "numbers", check, False, None, doc)


def shares(name: str, *, required: bool = False, doc: str = "") -> Param:
    """Node id -> share in [0, 1]: at least two, summing to 1."""

    def check(value: Any, path: Path, fail: Fail) -> None:
        if not isinstance(value, dict) or len(value) < 2:
            raise fail(path, "must map at least two node ids to their shares")
        for node_id, share in value.items():
            _fails(local_id_problem(node_id, "node id"), (*path, node_id), fail)
            _fails(number_problem(share, low=0.0, high=1.0), (*path, node_id), fail)
        total = sum(value.values())
        if abs(total - 1.0) > 1e-6:
            raise fail(path, f"shares must sum to 1, they sum to {total:g}")

    def refs(value: Any, path: Path) -> list[tuple[Path, str]]:
        return [((*path, k), k) for k in value]

    return Param(name, "shares", check, required, None, doc, refs)


def rule(name: str, *, doc: str = "") -> Param:
    """A rule of ``relive.policies.rules``; it parses here, its stats are read at run time."""

    def check(value: Any, path: Path, fail: Fail) -> None:
        if not isinstance(value, str):
            raise fail(path, f"must be a rule (a string), got {kind_of(value)}")
        try:
            parse_rule(value)
        except RuleError as e:
            raise fail(path, f"{value!r} {e.problem}") from e

    return Param(name, "rule", check, False, None, doc)


def stat(name: str, *, required: bool = False, doc: str = "") -> Param:
    """The name of a stat the referenced nodes record; whether they do is known at run time."""

    def check(value: Any, path: Path, fail: Fail) -> None:
        if not isinstance(value, str) or not STAT_NAME.match(value):
            raise fail(
                path,
                f"must be a stat name such as accuracy or canary.disagreement, got {value!r}",
            )

    return Param(name, "stat", check, required, None, doc)


def validate(kind: str, declared: Sequence[Param], values: Mapping[str, Any], fail: Fail) -> None:
    """Checks ``values`` against ``declared``: unknown names, required ones, each value."""
    names = [p.name for p in declared]
    for key in values:
        if key not in names:
            expected = ", ".join(names) if names else "none"
            raise fail((key,), f"unknown {kind} parameter {key!r}; expected: {expected}")
    article = "an" if kind[:1] in "aeiou" else "a"
    for p in declared:
        if p.name not in values:
            if p.required:
                raise fail((p.name,), f"is required for {article} {kind} policy")
            continue
        p.check(values[p.name], (p.name,), fail)


def node_refs(declared: Sequence[Param], values: Mapping[str, Any]) -> list[tuple[Path, str]]:
    """The node ids named in ``values`` (already validated), with their paths."""
    out: list[tuple[Path, str]] = []
    for p in declared:
        if p.name in values:
            out += p.refs(values[p.name], (p.name,))
    return out


def with_defaults(declared: Sequence[Param], values: Mapping[str, Any]) -> dict[str, Any]:
    out = {p.name: p.default for p in declared if p.default is not None}
    out.update(values)
    return out
