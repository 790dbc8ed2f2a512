"""``canary``: compares the predictions of the scoring node a candidate model feeds (the
primary) with those of a control node, records the share they disagree on, and flags it
above a threshold. It passes the candidate model on."""

from __future__ import annotations

from typing import Any

import numpy as np

from relive.policies import params as p
from relive.policies.context import Outcome, PolicyContext, PolicyFailed
from relive.policies.kind import PolicySpec
from relive.registry.v1 import registry_pb2

PARAMS = (
    p.number(
        "max_disagreement",
        required=True,
        low=0.0,
        high=1.0,
        doc="the share of disagreeing predictions above which the canary is flagged",
    ),
    p.node("control", what="control node", doc="the node whose predictions are the reference"),
    p.integer("min_samples", default=1, doc="fewer compared predictions are never flagged"),
)


def primary(definition: registry_pb2.IonDefinition, name: str) -> str:
    """The node a canary watches: the scoring pipeline fed by the same upstream as the canary."""
    sources = {e.from_node for e in definition.edges if e.to_node == name}
    params = definition.nodes[name].policy.params
    control = str(params["control"]) if "control" in params else ""
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


def _graph_refs(definition: registry_pb2.IonDefinition, name: str) -> list[str]:
    found = primary(definition, name)
    return [found] if found else []


def run(ctx: PolicyContext, params: dict[str, Any]) -> Outcome:
    name, where, events = ctx.node, ctx.where, ctx.events
    watched = primary(ctx.definition, name)
    control = str(params.get("control") or "")
    a_node, b_node = ctx.result(watched), ctx.result(control)
    if not watched or a_node is None or not control or b_node is None:
        raise PolicyFailed(
            f"canary {name}: needs a scoring node fed by its upstream and a "
            f"control node (found primary={watched!r}, control={control!r})"
        )
    a, b = a_node.predictions, b_node.predictions
    if a is None or b is None:
        raise PolicyFailed(
            f"canary {name}: {watched if a is None else control} recorded no "
            "predictions (call ctx.log_predictions)"
        )
    n = min(len(a), len(b))
    disagreement = float(np.mean(np.asarray(a[:n]) != np.asarray(b[:n]))) if n else 0.0
    threshold = float(params["max_disagreement"])
    enough = n >= int(params["min_samples"] or 1)
    flagged = enough and disagreement > threshold
    labels = {"primary": watched, "control": control}
    ctx.emit(events.stat("canary.disagreement", disagreement, labels=labels, **where))
    ctx.emit(events.stat("canary.samples", n, **where))
    ctx.emit(events.stat("canary.flagged", 1.0 if flagged else 0.0, **where))
    if flagged:
        ctx.emit(
            events.log(
                f"canary {name}: {watched} and {control} disagree on {disagreement:.1%} of "
                f"{n} predictions, above the threshold {threshold:.1%}",
                "WARNING",
                **where,
            )
        )
    stats = {"canary.disagreement": disagreement, "canary.flagged": float(flagged)}
    models, _ = ctx.incoming()
    version = next((v for k, v in models.items() if "." not in k), "")
    return Outcome(outputs={"model": version} if version else {}, stats=stats)


SPEC = PolicySpec(params=PARAMS, run=run, graph_refs=_graph_refs, reruns_with_all_inputs=True)
