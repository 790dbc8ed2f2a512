"""The auto_if rule language: one grammar, which the registry validates with and the
executor evaluates with, so a rule registers exactly when it can run."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relive.errors import InvalidArgument
from relive.policies import Decision, PolicyFailed, RuleError, parse_rule
from tests.unit.memory_policy_context import Made, MemoryContext, ion

GATE = """
name: test
nodes:
  train:
    pipeline:
      components:
        fit: {{call: examples.patterns.steps:fit}}
      outputs: {{model: fit}}
  gate:
    policy: approval
    params: {{auto_if: {rule}, timeout_s: 5}}
edges:
  - {{from: train, to: gate}}
"""


def _quoted(rule: str) -> str:
    return "'" + rule.replace("'", "''") + "'"


def registry_accepts(rule: str) -> bool:
    try:
        ion(GATE.format(rule=_quoted(rule)))
    except InvalidArgument as e:
        assert e.field == "nodes.gate.params.auto_if", e.message
        return False
    return True


def executor_decides(rule: str, stats: dict[str, float]) -> bool | None:
    """What the approval gate decides by the rule: True (approved by it), False (it held
    not, so a person was asked), or None when the rule is not one."""
    definition = ion(GATE.format(rule=_quoted("stats.x > 0")))
    ctx = MemoryContext(
        definition,
        "gate",
        {"train": Made({"model": "models/m/versions/1"}, stats)},
        people=[Decision(False, "alice", "no")],
    )
    try:
        ctx.run({"auto_if": rule, "timeout_s": 5})
    except PolicyFailed as e:
        if "is not a valid rule" in str(e) or "is empty" in str(e):
            return None
        assert "rejected by alice" in str(e), e
        return False
    return True


STATS = {"accuracy": 0.93, "f1": 0.81, "canary.flagged": 0.0, "n": 200.0, "tp": 120.0}

ACCEPTED = [
    ("stats.accuracy >= 0.9", True),  # the one form the registry accepted before
    ("  stats.accuracy>=0.95 ", False),  # surrounding space
    ("stats.accuracy >= +.9", True),  # numbers as the registry's old pattern wrote them
    ("stats.accuracy > 1e-1", True),
    ("stats.canary.flagged == 0", True),  # a dotted stat name, by attribute...
    ('stats["canary.flagged"] != 0', False),  # ...or by subscript
    ("stats.accuracy >= 0.9 and stats.f1 > 0.8", True),
    ("stats.accuracy >= 0.9 and not stats.f1 > 0.8", False),
    ("stats.f1 > 0.9 or stats.accuracy > 0.9", True),
    ("stats.tp / stats.n > 0.5", True),
    ("(stats.tp + 80) * 2 / stats.n - 1 >= 1", True),
    ("-stats.accuracy < -0.9", True),
    ("0.9 < stats.accuracy < 0.95", True),
    ("0.9 < stats.accuracy < 0.92", False),
]

REJECTED = [
    ("accuracy is good", "'is' is not a comparison"),
    ("stats.accuracy >= ", "invalid syntax"),
    ("stats.accuracy", "is a number, not a condition"),
    ("stats.accuracy + 1", "is a number, not a condition"),
    ("accuracy > 0.9", "'accuracy' (stats are read as stats.accuracy"),
    ("__import__('os').system('x') > 0", "a function call"),
    ("stats.accuracy in 1", "'in' is not a comparison"),
    ("stats.accuracy >= 'high'", "the constant 'high' is not allowed"),
    ("stats.accuracy >= True", "the constant True is not allowed"),
    ("stats.accuracy ** 2 > 0.8", "is not allowed"),
    ("stats[0] > 1", "is not allowed"),
    ("", "is empty"),
]


@pytest.mark.parametrize(("rule", "decision"), ACCEPTED)
def test_the_registry_accepts_what_the_executor_evaluates(rule: str, decision: bool) -> None:
    assert registry_accepts(rule)
    assert executor_decides(rule, STATS) is decision
    assert parse_rule(rule).evaluate(STATS) is decision


@pytest.mark.parametrize(("rule", "problem"), REJECTED)
def test_both_sides_reject_what_is_not_a_rule(rule: str, problem: str) -> None:
    with pytest.raises(RuleError) as e:
        parse_rule(rule)
    assert problem in e.value.problem
    assert str(e.value).startswith(f"auto_if {rule!r} ")
    assert not registry_accepts(rule)
    # An empty auto_if is no rule to the executor (a person decides), as it always was.
    assert executor_decides(rule, STATS) is (False if rule == "" else None)


def test_a_registry_error_names_the_field_and_how_to_write_a_rule() -> None:
    with pytest.raises(InvalidArgument) as e:
        ion(GATE.format(rule="'accuracy is good'"))
    assert e.value.field == "nodes.gate.params.auto_if"
    assert "'accuracy is good' is not a valid rule" in e.value.message
    assert "stats.<name> <op> <number>" in e.value.message
    with pytest.raises(InvalidArgument) as e:
        ion(GATE.format(rule="0.9"))
    assert "must be a rule (a string), got a number" in e.value.message


def test_unknown_stats_are_found_only_when_the_rule_runs() -> None:
    rule = parse_rule("stats.auc > 0.8 or stats.accuracy > 0.9")
    assert rule.stat_names() == ["auc", "accuracy"]
    with pytest.raises(RuleError) as e:
        rule.evaluate({"accuracy": 0.95, "sys.wall_s": 1.0, "profile.x.mean": 0.0})
    # Every operand is read, as before: the rule names what is missing and what exists.
    assert "reads stats.auc, which no upstream node recorded (recorded: accuracy)" in str(e.value)
    with pytest.raises(RuleError, match=r"recorded: none"):
        parse_rule('stats["a.b"] > 1').evaluate({})


def test_division_by_zero_is_a_rule_error() -> None:
    with pytest.raises(RuleError, match=r"divides by zero \(stats.n - 200 is 0\)"):
        parse_rule("stats.tp / (stats.n - 200) > 1").evaluate(STATS)


class _Stats:
    """``stats`` for Python's own evaluation of a rule: the oracle."""

    def __init__(self, values: dict[str, float]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> float:
        return self._values[name]

    def __getitem__(self, name: str) -> float:
        return self._values[name]


NAMES = ("a", "b", "c")
numbers = st.integers(min_value=-50, max_value=50).map(str) | st.sampled_from(["0.5", "1e1"])
terms = st.recursive(
    numbers | st.sampled_from([f"stats.{n}" for n in NAMES] + ['stats["b"]']),
    lambda inner: (
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        )
        | inner.map(lambda t: f"-{t}")
    ),
    max_leaves=4,
)
comparisons = st.tuples(terms, st.sampled_from([">=", "<=", ">", "<", "==", "!="]), terms).map(
    " ".join
)
conditions = st.recursive(
    comparisons,
    lambda inner: (
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        )
        | inner.map(lambda t: f"not {t}")
    ),
    max_leaves=4,
)


@given(conditions, st.dictionaries(st.sampled_from(NAMES), st.integers(-20, 20), min_size=3))
def test_rules_mean_what_python_says_they_mean(rule: str, values: dict[str, int]) -> None:
    stats = {k: float(v) for k, v in values.items()}
    parsed = parse_rule(rule)  # every rule of the grammar parses
    expected: Any
    try:
        # The oracle reads every operand, as the rule does; Python would short-circuit.
        expected = bool(eval(rule, {"__builtins__": {}}, {"stats": _Stats(stats)}))
    except ZeroDivisionError:
        with pytest.raises(RuleError, match="divides by zero"):
            parsed.evaluate(stats)
        return
    try:
        assert parsed.evaluate(stats) is expected
    except RuleError as e:  # a division by zero in an operand Python skipped
        assert "divides by zero" in str(e)
