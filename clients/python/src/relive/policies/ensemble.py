"""``ensemble``: builds one model from its members' models: they vote (classifiers), or are
averaged or take the median (regressors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from relive.policies import params as p
from relive.policies.context import Outcome, PolicyContext, PolicyFailed, models_of
from relive.policies.kind import PolicySpec

METHODS = ("mean", "vote", "median")

PARAMS = (
    p.nodes("members", what="member node", doc="default: the nodes of its incoming edges"),
    p.choice("method", METHODS, noun="method", default="vote"),
    p.numbers("weights", doc="one per member; default: equal"),
)


class Ensemble:
    """Members vote (classifiers), or are averaged or take the median (regressors)."""

    def __init__(
        self, members: Sequence[Any], method: str = "vote", weights: Sequence[float] | None = None
    ) -> None:
        self.members = list(members)
        self.method = method
        self.weights = [float(w) for w in weights] if weights else [1.0] * len(self.members)

    def predict(self, X: Any) -> np.ndarray:
        preds = np.stack([np.asarray(m.predict(X)) for m in self.members])
        w = np.asarray(self.weights)
        if self.method == "mean":
            return np.asarray(np.average(preds, axis=0, weights=w))
        if self.method == "median":
            return np.asarray(np.median(preds, axis=0))
        out = []
        for column in preds.T:
            values = np.unique(column)
            scores = [w[column == v].sum() for v in values]
            out.append(values[int(np.argmax(scores))])
        return np.asarray(out)


# Stored models pickle this class by name. It lived in relive.pipeline.models, which still
# exports it: naming that module keeps the pickled bytes, and so the sha256 of an ensemble
# model, the same as before the move, so relaunches of older runs still match. (numpy names
# its public module the same way, with its ``set_module`` decorator.)
Ensemble.__module__ = "relive.pipeline.models"


def _check(values: Mapping[str, Any], fail: p.Fail) -> None:
    members, weights = values.get("members", []), values.get("weights")
    if weights is not None and members and len(weights) != len(members):
        raise fail(("weights",), f"has {len(weights)} weights for {len(members)} members")


def edge_sources(ctx: PolicyContext) -> list[str]:
    """The nodes with an edge into the policy, in the ION's edge order."""
    return [e.from_node for e in ctx.definition.edges if e.to_node == ctx.node]


def run(ctx: PolicyContext, params: dict[str, Any]) -> Outcome:
    name = ctx.node
    members = [str(m) for m in params.get("members") or []] or edge_sources(ctx)
    if len(members) < 2:
        raise PolicyFailed(f"ensemble {name}: needs at least two members (got {len(members)})")
    versions = models_of(ctx, members, f"ensemble {name}")
    model = Ensemble(
        [ctx.load_model(v) for v in versions], str(params["method"]), params.get("weights")
    )
    stored = ctx.store_model(model, {"policy": "ensemble", "members": ",".join(members)})
    ctx.emit(ctx.events.model("logged", stored.name, stored.sha256, **ctx.where))
    return Outcome(outputs={"model": stored.name})


SPEC = PolicySpec(params=PARAMS, run=run, check=_check)
