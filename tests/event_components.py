"""Components the event-identity tests use."""

from __future__ import annotations

from relive.pipeline import RunContext, component


@component
def overlong_type(ctx: RunContext) -> None:
    """Records an event whose type is longer than the recorder takes (256 characters)."""
    ctx.log_stat("before", 1.0)
    ctx.emit("t" * 300, {"why": "refused by the recorder"})
