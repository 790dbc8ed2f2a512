"""Policy kinds: one module each, and the one table of them.

A kind's module declares its parameters (``relive.policies.params``), its rule grammar where
it has one (``relive.policies.rules``), and its behaviour, written against the small
:class:`~relive.policies.context.PolicyContext` that the executor implements. The registry
validates ION files with the declarations; the executor runs policies through the same
table. Neither imports the other: this package is part of the SDK.

Adding a kind: write its module (a ``SPEC``), add one row to ``KINDS`` below, and add its
``POLICY_TYPE_*`` value to ``protos/relive/registry/v1/registry.proto`` (then ``make protos``).
"""

from __future__ import annotations

from relive.policies import (
    ab_split,
    approval,
    canary,
    champion_challenger,
    ensemble,
    model_transfer,
)
from relive.policies.context import (
    Decision,
    NodeOutput,
    Outcome,
    PolicyContext,
    PolicyFailed,
)
from relive.policies.kind import Kind, PolicySpec
from relive.policies.rules import Rule, RuleError, parse_rule
from relive.registry.v1 import registry_pb2 as _pb

# The one mapping between a kind's name in an ION file, its proto enum value and its module.
# The order is the order error messages list them in.
KINDS: tuple[Kind, ...] = (
    Kind("model_transfer", _pb.POLICY_TYPE_MODEL_TRANSFER, model_transfer.SPEC),
    Kind("approval", _pb.POLICY_TYPE_APPROVAL, approval.SPEC),
    Kind("canary", _pb.POLICY_TYPE_CANARY, canary.SPEC),
    Kind("ensemble", _pb.POLICY_TYPE_ENSEMBLE, ensemble.SPEC),
    Kind("ab_split", _pb.POLICY_TYPE_AB_SPLIT, ab_split.SPEC),
    Kind("champion_challenger", _pb.POLICY_TYPE_CHAMPION_CHALLENGER, champion_challenger.SPEC),
)


def by_name(name: str) -> Kind | None:
    return next((k for k in KINDS if k.name == name), None)


def by_enum(value: int) -> Kind | None:
    """The kind of a ``Policy.type``; None for an unknown value (a newer registry's)."""
    return next((k for k in KINDS if k.enum == value), None)


def names() -> list[str]:
    return [k.name for k in KINDS]


__all__ = [
    "KINDS",
    "Decision",
    "Kind",
    "NodeOutput",
    "Outcome",
    "PolicyContext",
    "PolicyFailed",
    "PolicySpec",
    "Rule",
    "RuleError",
    "by_enum",
    "by_name",
    "names",
    "parse_rule",
]
