"""``champion_challenger``: passes on the challenger's model only when its metric beats the
champion's by ``min_gain``, and the champion's model otherwise.

The decision is recorded as a ``champion.decision`` event (both metric values, the gain, the
winner and its model version). A relaunch replays it by node and round, as approvals are
replayed: the same side wins, whatever the metrics say this time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from relive.policies import params as p
from relive.policies.context import Outcome, PolicyContext, PolicyFailed, models_of
from relive.policies.kind import PolicySpec

REPLAYS = "champion.decision"
SIDES = ("champion", "challenger")

PARAMS = (
    p.node("champion", what="champion node", required=True, doc="the node whose model serves"),
    p.node("challenger", what="challenger node", required=True, doc="the node that competes"),
    p.stat("metric", required=True, doc="the stat both nodes record, compared"),
    p.number("min_gain", low=0.0, default=0.0, doc="how much better the challenger must be"),
    p.choice("direction", ("higher", "lower"), default="higher", doc="which way is better"),
)


@dataclass(frozen=True)
class Verdict:
    winner: str  # "champion" or "challenger"
    gain: float  # how much better the challenger is, in the metric's better direction


def judge(champion: float, challenger: float, min_gain: float, direction: str) -> Verdict:
    """The challenger wins when it is better by at least ``min_gain``, and strictly better:
    a tie keeps the champion."""
    gain = challenger - champion if direction == "higher" else champion - challenger
    return Verdict("challenger" if gain > 0 and gain >= min_gain else "champion", gain)


def _check(values: Mapping[str, Any], fail: p.Fail) -> None:
    if values["champion"] == values["challenger"]:
        raise fail(("challenger",), "names the champion too; the challenger must be another node")


def _metric(ctx: PolicyContext, node: str, metric: str) -> float | None:
    result = ctx.result(node)
    if result is None or metric not in result.stats:
        return None
    return float(result.stats[metric])


def run(ctx: PolicyContext, params: dict[str, Any]) -> Outcome:
    name, metric = ctx.node, str(params["metric"])
    nodes = {side: str(params[side]) for side in SIDES}
    made = models_of(ctx, [nodes[side] for side in SIDES], f"champion_challenger {name}")
    versions = dict(zip(SIDES, made, strict=True))
    values = {side: _metric(ctx, n, metric) for side, n in nodes.items()}
    min_gain, direction = float(params["min_gain"]), str(params["direction"])
    recorded = ctx.recorded(REPLAYS)
    before = json_format.MessageToDict(recorded.custom.data) if recorded is not None else {}
    for side in SIDES:  # a node reused from the recording, not run again, has no stats here
        if values[side] is None and f"{side}_value" in before:
            values[side] = float(before[f"{side}_value"])
    missing = [side for side in SIDES if values[side] is None]
    if missing:
        node = nodes[missing[0]]
        result = ctx.result(node)
        stats = result.stats if result is not None else {}
        known = ", ".join(sorted(k for k in stats if not k.startswith(("sys.", "profile."))))
        raise PolicyFailed(
            f"champion_challenger {name}: node {node} recorded no stat {metric!r} "
            f"(recorded: {known or 'none'})"
        )
    verdict = judge(values["champion"] or 0.0, values["challenger"] or 0.0, min_gain, direction)
    winner = str(before.get("winner", verdict.winner))
    if winner not in SIDES:
        raise PolicyFailed(f"champion_challenger {name}: the recorded winner {winner!r} is unknown")
    if recorded is not None and winner != verdict.winner:
        ctx.emit(
            ctx.events.log(
                f"champion_challenger {name}: replaying the recorded decision ({winner} wins); "
                f"the metrics of this run favour the {verdict.winner}",
                "WARNING",
                **ctx.where,
            )
        )
    decision = {
        "metric": metric,
        "direction": direction,
        "min_gain": min_gain,
        "champion": nodes["champion"],
        "challenger": nodes["challenger"],
        "champion_value": values["champion"],
        "challenger_value": values["challenger"],
        "gain": verdict.gain,
        "winner": winner,
        "winner_node": nodes[winner],
        "model_version": versions[winner],
        "replayed": recorded is not None,
    }
    ctx.emit(ctx.events.custom(REPLAYS, decision, **ctx.where))
    ctx.emit(ctx.events.stat("champion.gain", verdict.gain, labels={"metric": metric}, **ctx.where))
    result = ctx.result(nodes[winner])
    stats = dict(result.stats) if result is not None else {}
    return Outcome(outputs={"model": versions[winner]}, stats=stats)


SPEC = PolicySpec(params=PARAMS, run=run, check=_check, replays=REPLAYS)
