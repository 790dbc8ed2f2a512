"""``approval``: a gate that passes the model on once a rule or a person approves it.

On a relaunch the recorded decision (a ``human.approval`` event of the node and round)
stands in for the rule and the person.
"""

from __future__ import annotations

from typing import Any

from relive.policies import params as p
from relive.policies.context import Decision, Outcome, PolicyContext, PolicyFailed
from relive.policies.kind import PolicySpec
from relive.policies.rules import RuleError, parse_rule

REPLAYS = "human.approval"

PARAMS = (
    p.rule("auto_if", doc="approves when the rule holds on the upstream stats"),
    p.number("timeout_s", positive=True, default=600.0, doc="seconds to wait for a person"),
    p.choice(
        "on_timeout",
        ("approve", "reject"),
        doc="what happens when nobody decides in time; unset, the run fails",
    ),
)


def run(ctx: PolicyContext, params: dict[str, Any]) -> Outcome:
    models, stats = ctx.incoming()
    recorded = ctx.recorded(REPLAYS)
    decision = (
        Decision(
            recorded.human_action.action == "approve",
            recorded.human_action.user,
            recorded.human_action.comment,
        )
        if recorded is not None
        else None
    )
    rule = str(params.get("auto_if", "") or "")
    if decision is None and rule:
        try:
            ok = parse_rule(rule).evaluate(stats)
        except RuleError as e:
            raise PolicyFailed(f"approval gate {ctx.node}: {e}") from e
        if ok:
            decision = Decision(True, "auto_if", rule)
        ctx.emit(ctx.events.custom("approval.rule", {"rule": rule, "result": ok}, **ctx.where))
    if decision is None:
        decision = ctx.wait_for_person(
            float(params["timeout_s"]), str(params.get("on_timeout", "") or "")
        )
    ctx.emit(
        ctx.events.human(
            decision.user,
            "approve" if decision.approve else "reject",
            decision.comment,
            **ctx.where,
        )
    )
    if not decision.approve:
        raise PolicyFailed(
            f"approval gate {ctx.node}: rejected by {decision.user}"
            + (f": {decision.comment}" if decision.comment else "")
        )
    version = models.get("model") or next(iter(models.values()), "")
    return Outcome(outputs={"model": version} if version else {}, stats=stats)


SPEC = PolicySpec(params=PARAMS, run=run, replays=REPLAYS)
