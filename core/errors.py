"""The domain's errors. Each carries a code from `CATALOGUE` and the HTTP status it maps to; the
HTTP edge (relay/middleware.py) turns them into Twilio-shaped JSON. docs/errors.md is the table.

Every code is either Twilio's, used only with the meaning Twilio's error catalogue gives it, or
Maskline's own, in 89000-89099: a range Twilio's catalogue does not use (it has no 84xxx-89xxx
codes), so code that branches on `e.code` never mistakes one of ours for one of Twilio's."""

from __future__ import annotations

from typing import Final

__all__ = [
    "CATALOGUE",
    "MASKLINE_CODES",
    "INVALID_PARAMETER",
    "PARTICIPANT_REFUSED",
    "COUNTRY_NOT_ALLOWED",
    "MasklineError",
    "InvalidParameter",
    "MissingParameter",
    "NotFound",
    "Conflict",
    "Forbidden",
    "Unavailable",
    "PoolError",
]


# code -> (HTTP status, title). Twilio's titles are Twilio's, verbatim.
CATALOGUE: Final[dict[int, tuple[int, str]]] = {
    20003: (401, "Permission Denied"),  # missing or wrong credentials
    20004: (405, "Method not allowed"),
    20403: (403, "403 Forbidden"),
    20404: (404, "Not Found"),
    20422: (400, "Invalid Parameter"),
    20429: (429, "Too Many Requests"),
    20500: (500, "Internal Server Error"),
    20503: (503, "Service unavailable"),
    21602: (400, "Message body is required"),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    63016: (400, "Outside messaging window. For WhatsApp, use a Message Template instead"),
    80103: (400, "Participant Already In Session"),
    80203: (400, "No Available Proxy For Country"),
    80205: (400, "No Proxies For Service"),
    80206: (400, "No Available Proxy"),
    80207: (400, "No unreserved numbers in proxy pool."),
    80208: (400, "No Available Unused Proxy"),
    80301: (404, "Not Found Phone Number SID"),
    80308: (404, "Session with the unique name not found."),
    80601: (400, "Phone Number Not Available"),
    80602: (409, "Non Unique Service Name"),
    80603: (409, "Non Unique Session Name"),
    80604: (400, "Proxy Identifier In Use"),
    80605: (400, "Proxy Identifier Not In Service"),
    80607: (400, "Session Closed"),
    80608: (400, "Session Status Invalid"),
    80609: (400, "Too Many Added Participants"),
    80611: (400, "Proxy Number In Active Sessions"),
    80613: (400, "Downstream Request Rejected"),
    # Maskline's own (no Twilio code has this meaning).
    89001: (400, "Participant Refused"),  # emergency, short code, premium-rate, shared-cost, non-geographic
    89002: (400, "Participant Country Not Allowed"),  # not in the Service's AllowedCountries
    89003: (400, "Participant Blocked"),  # on the Service's block list (/v1/Services/{KS}/Blocked)
    89004: (400, "Scheduled Message Not Pending"),  # sent, sending, failed, canceled or expired already
    89005: (400, "Fallback Number Not In Service"),  # FallbackNumber is no phone number of the Service
    89006: (400, "Fallback Number Not Assignable"),  # ProxyIdentifier names the shared FallbackNumber
    89007: (400, "Proxy Number Not WhatsApp Capable"),  # ProxyIdentifier for a WhatsApp participant
}
MASKLINE_CODES: Final = range(89000, 89100)
INVALID_PARAMETER: Final = 20422
PARTICIPANT_REFUSED: Final = 89001
COUNTRY_NOT_ALLOWED: Final = 89002


class MasklineError(Exception):
    """Base of every error a caller may see. `message` says what to fix."""

    code: int = INVALID_PARAMETER
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
    code = INVALID_PARAMETER
    status = 400


class MissingParameter(MasklineError):
    """A required parameter is missing (the message names it): Twilio's Invalid Parameter."""

    code = INVALID_PARAMETER
    status = 400


class NotFound(MasklineError):
    code = 20404
    status = 404


class Conflict(MasklineError):
    code = 80603
    status = 409


class Forbidden(MasklineError):
    code = 20403
    status = 403


class Unavailable(MasklineError):
    """Redis or Postgres could not be reached; the caller may retry."""

    code = 20503
    status = 503


class PoolError(MasklineError):
    """Participant / number / session rule violations (80xxx, 89xxx codes); the status is the
    code's in CATALOGUE."""

    code = 80206
    status = 400

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        if code is not None and status is None:
            status = CATALOGUE.get(code, (400, ""))[0]
        super().__init__(message, code=code, status=status)
