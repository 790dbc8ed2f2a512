"""``ab_split``: builds one model that routes each row to one arm's model, with the given
shares, by a seeded hash of the row."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from relive.pipeline.seeds import derive_seed
from relive.policies import params as p
from relive.policies.context import Outcome, PolicyContext, PolicyFailed, models_of
from relive.policies.ensemble import edge_sources
from relive.policies.kind import PolicySpec

PARAMS = (
    p.shares("weights", required=True, doc="node id -> share of the rows"),
    p.integer("seed", minimum=0, doc="default: derived from the run's seed"),
)


class ABSplit:
    """Routes each row to one arm by a seeded hash of the row itself, with the given shares,
    so the same seed sends the same rows the same way, in any batch, on any machine."""

    def __init__(
        self, arms: Sequence[Any], weights: Sequence[float], seed: int, names: Sequence[str] = ()
    ) -> None:
        self.arms = list(arms)
        self.weights = [float(w) for w in weights]
        self.seed = int(seed)
        self.names = list(names)

    def route(self, X: Any) -> np.ndarray:
        X = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
        key = str(self.seed).encode()
        draws = np.asarray(
            [
                int.from_bytes(hashlib.sha256(key + row.tobytes()).digest()[:8], "big") / 2**64
                for row in X
            ]
        )
        edges = np.cumsum(self.weights) / sum(self.weights)
        return np.minimum(np.searchsorted(edges, draws, side="right"), len(self.arms) - 1)

    def predict(self, X: Any) -> np.ndarray:
        X = np.asarray(X)
        arm = self.route(X)
        preds = [np.asarray(m.predict(X)) for m in self.arms]
        return np.choose(arm, preds)


# Pickled by its old public name, as Ensemble is (see relive.policies.ensemble).
ABSplit.__module__ = "relive.pipeline.models"


def run(ctx: PolicyContext, params: dict[str, Any]) -> Outcome:
    name = ctx.node
    weights = {str(k): float(v) for k, v in dict(params.get("weights") or {}).items()}
    arms = sorted(weights) if weights else edge_sources(ctx)
    if len(arms) < 2:
        raise PolicyFailed(f"A/B split {name}: needs at least two arms (got {len(arms)})")
    versions = models_of(ctx, arms, f"A/B split {name}")
    seed = int(params["seed"]) if "seed" in params else derive_seed(ctx.seed, name, "split")
    model = ABSplit(
        [ctx.load_model(v) for v in versions], [weights.get(a, 1.0) for a in arms], seed, arms
    )
    for arm in arms:
        share = weights.get(arm, 1.0 / len(arms))
        ctx.emit(ctx.events.stat(f"ab.share.{arm}", share, **ctx.where))
    stored = ctx.store_model(model, {"policy": "ab_split", "arms": ",".join(arms)})
    ctx.emit(ctx.events.model("logged", stored.name, stored.sha256, **ctx.where))
    return Outcome(outputs={"model": stored.name})


SPEC = PolicySpec(params=PARAMS, run=run)
