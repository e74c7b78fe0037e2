"""Request parameters as Twilio's clients send them: form-encoded (repeated keys for lists), or
JSON. Every parse error names the parameter and what to send instead."""

from __future__ import annotations

import builtins
import datetime as dt
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiDict, MultiMapping

from core.errors import InvalidParameter, MissingParameter

__all__ = ["Params", "read_params", "iso", "page_args"]


class Params:
    def __init__(self, data: MultiMapping[Any]) -> None:
        # Twilio parameter names are PascalCase; accept any case from hand-written clients.
        # Only text values are parameters (a multipart file part is not one).
        self._data: MultiDict[str] = MultiDict((k.lower(), v) for k, v in data.items() if isinstance(v, str))

    def __contains__(self, name: builtins.str) -> bool:
        return name.lower() in self._data

    def str(self, name: builtins.str, *, required: bool = False, max_len: int = 1024) -> builtins.str | None:
        value = self._data.get(name.lower())
        if value is None or value == "":
            if required:
                raise MissingParameter(f"Missing required parameter {name}")
            return None if value is None else ""
        if len(value) > max_len:
            raise InvalidParameter(f"{name} is longer than {max_len} characters")
        return value

    def int(
        self, name: builtins.str, *, minimum: builtins.int = 0, maximum: builtins.int = 2**31 - 1
    ) -> builtins.int | None:
        value = self._data.get(name.lower())
        if value is None or value == "":
            return None
        try:
            number = int(value)
        except ValueError:
            raise InvalidParameter(f"{name} must be a whole number, got {value[:40]!r}") from None
        if not minimum <= number <= maximum:
            raise InvalidParameter(f"{name} must be between {minimum} and {maximum}, got {number}")
        return number

    def bool(self, name: builtins.str) -> bool | None:
        value = self._data.get(name.lower())
        if value is None or value == "":
            return None
        lowered = value.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise InvalidParameter(f"{name} must be true or false, got {value[:40]!r}")

    def enum(self, name: builtins.str, allowed: Any) -> builtins.str | None:
        value = self.str(name)
        if value is None or value == "":
            return None
        choices = [a.value for a in allowed]
        if value not in choices:
            raise InvalidParameter(f"{name} must be one of {', '.join(choices)}; got {value[:40]!r}")
        return value

    def datetime_ms(self, name: builtins.str) -> builtins.int | None:
        value = self.str(name)
        if not value:
            return None
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidParameter(
                f"{name} must be an ISO 8601 date-time such as 2030-01-31T18:00:00Z"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return int(parsed.timestamp() * 1000)

    def list(self, name: builtins.str) -> builtins.list[builtins.str]:
        return self._data.getall(name.lower(), [])


async def read_params(request: web.Request) -> Params:
    if request.content_type == "application/json":
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            raise InvalidParameter("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidParameter("the JSON body must be an object")
        data: MultiDict[str] = MultiDict()
        for key, value in body.items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    data.add(key, orjson.dumps(item).decode())
                elif isinstance(item, bool):
                    data.add(key, "true" if item else "false")
                elif item is not None:
                    data.add(key, str(item))
        return Params(data)
    return Params(await request.post())


def iso(ms: int | str | None) -> str | None:
    """Epoch ms -> Twilio's date-time format (what twilio-python's deserializer expects)."""
    if ms in (None, "", 0, "0"):
        return None
    return dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def page_args(request: web.Request) -> tuple[int, int]:
    """(page, page_size) from the query; Twilio's default page size is 50, maximum 1000."""
    query = Params(request.query)
    size = query.int("PageSize", minimum=1, maximum=1000) or 50
    page = query.int("Page", minimum=0, maximum=10_000_000) or 0
    return page, size
