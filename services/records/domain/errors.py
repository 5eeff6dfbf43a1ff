"""The domain's refusals. The HTTP layer maps them to problem+json answers:
NotFound -> 404, InvalidTransition -> 409, RuleViolation -> 422."""

from __future__ import annotations


class DomainError(Exception):
    """A command the plan refuses. ``code`` is stable (machine-readable); ``detail`` is for people;
    ``field`` names the request field at fault, when there is one."""

    status: int = 400

    def __init__(self, code: str, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r}, "
                f"field={self.field!r})")


class NotFound(DomainError):
    """The case or the item named in the path does not exist (404)."""

    status = 404


class InvalidTransition(DomainError):
    """The command does not fit the current state of the case or item (409)."""

    status = 409


class RuleViolation(DomainError):
    """A practice rule refuses the command as given: cap reached, reason missing... (422)."""

    status = 422
