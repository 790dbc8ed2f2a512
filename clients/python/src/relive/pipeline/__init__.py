"""The pipeline SDK: ``@component`` functions and the run context they receive.

A component is a function of one argument, the :class:`RunContext`::

    from relive.pipeline import component

    @component
    def fit(ctx):
        X, y = ctx.inputs["load"]
        model = LogisticRegression(random_state=ctx.seed).fit(X, y)
        ctx.log_stat("accuracy", model.score(X, y))
        return model
"""

from relive.pipeline.component import component, is_component
from relive.pipeline.context import RunContext
from relive.pipeline.seeds import derive_seed

__all__ = ["RunContext", "component", "derive_seed", "is_component"]
