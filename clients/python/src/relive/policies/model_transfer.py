"""``model_transfer``: passes the incoming model on, recording that it did."""

from __future__ import annotations

from typing import Any

from relive.policies.context import Outcome, PolicyContext, PolicyFailed
from relive.policies.kind import PolicySpec


def run(ctx: PolicyContext, params: dict[str, Any]) -> Outcome:
    models, stats = ctx.incoming()
    version = models.get("model") or next(iter(models.values()), "")
    if not version:
        raise PolicyFailed(f"model transfer {ctx.node}: no model reaches it")
    ctx.emit(ctx.events.model("transferred", version, ctx.model_sha256(version), **ctx.where))
    return Outcome(outputs={"model": version}, stats=stats)


SPEC = PolicySpec(params=(), run=run)
