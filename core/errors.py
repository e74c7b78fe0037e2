"""The domain's errors. Each carries the Twilio-style code and HTTP status it maps to; the HTTP edge
(relay/middleware.py) turns them into Twilio-shaped JSON. See docs/errors.md for the table."""

from __future__ import annotations

__all__ = [
    "MasklineError",
    "InvalidParameter",
    "MissingParameter",
    "NotFound",
    "Conflict",
    "Forbidden",
    "Unavailable",
    "PoolError",
]


class MasklineError(Exception):
    """Base of every error a caller may see. `message` says what to fix."""

    code: int = 20001
    status: int = 400

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, status={self.status}, message={self.message!r})"


class InvalidParameter(MasklineError):
    code = 20001
    status = 400


class MissingParameter(MasklineError):
    code = 21602
    status = 400


class NotFound(MasklineError):
    code = 20404
    status = 404


class Conflict(MasklineError):
    code = 80609
    status = 409


class Forbidden(MasklineError):
    code = 20403
    status = 403


class Unavailable(MasklineError):
    """Redis or Postgres could not be reached; the caller may retry."""

    code = 20500
    status = 503


class PoolError(MasklineError):
    """Participant / number / session rule violations (80xxx codes), always HTTP 400."""

    code = 80206
    status = 400
