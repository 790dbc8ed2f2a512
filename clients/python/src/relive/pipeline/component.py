"""The ``@component`` decorator: marks a function as a pipeline step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__relive_component__"


@overload
def component(fn: F) -> F: ...
@overload
def component(*, name: str | None = None) -> Callable[[F], F]: ...


def component(fn: Any = None, *, name: str | None = None) -> Any:
    """Marks ``fn(ctx)`` as a component. It stays an ordinary function, callable in tests."""

    def mark(f: F) -> F:
        setattr(f, _MARK, {"name": name or f.__name__})
        return f

    return mark(fn) if fn is not None else mark


def is_component(fn: Any) -> bool:
    return callable(fn) and hasattr(fn, _MARK)
