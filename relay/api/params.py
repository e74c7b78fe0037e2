"""Request parameters as Twilio's clients send them: form-encoded (repeated keys for lists),
multipart/form-data, or JSON; and the query string of a GET. Every parse error names the
parameter and what to send instead.

Bodies and query strings are decoded strictly: invalid UTF-8, an unknown charset or a multipart
body that cannot be read is refused (InvalidParameter, 400) - never a 500, and never a value kept
with U+FFFD replacement characters. Every string a handler reads is checked again when read: no
NUL or other control character (tab, newline and carriage return only in free text such as a
message Body), and within its length."""

from __future__ import annotations

import builtins
import codecs
import datetime as dt
import re
from typing import Any, Final
from urllib.parse import unquote_to_bytes, urlsplit

import orjson
from aiohttp import BodyPartReader, hdrs, web
from multidict import MultiDict, MultiMapping

from core.errors import InvalidParameter, MissingParameter
from core.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Cursor, PageRequest

try:  # recent yarl (aiohttp reads forms with it)
    from yarl import query_to_pairs as _fast_pairs
except ImportError:  # pragma: no cover - older yarl: the strict reader alone
    _fast_pairs = None  # type: ignore[assignment]

__all__ = [
    "Params",
    "read_params",
    "read_form",
    "query_params",
    "parse_form",
    "decode_text",
    "check_text",
    "check_url",
    "iso",
    "page_args",
]

# More parameters than any request of the API (or any Twilio webhook) carries.
MAX_FIELDS: Final = 1000
# Date-times a caller may send, after conversion to UTC (epoch ms fit a Lua number exactly).
MIN_YEAR: Final = 1970
MAX_YEAR: Final = 9999
FORM_TYPES: Final = ("", "application/x-www-form-urlencoded")
# Control characters (C0 and DEL); free text may hold tab, newline and carriage return.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# What a strict UTF-8 decoder never yields (lone surrogates: surrogateescape'd bytes, JSON \ud800).
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")
_WHOLE_NUMBER: Final = re.compile(r"[+-]?[0-9]{1,20}")
_ASCII_PROBE: Final = "a=b&c+d%"


def check_text(name: str, value: str, *, max_len: int, text: bool = False) -> str:
    """`value` if it is fit to store as parameter `name`, else InvalidParameter saying why."""
    if _SURROGATE.search(value):
        raise InvalidParameter(f"{name} is not valid UTF-8; send the text encoded as UTF-8")
    bad = (_CONTROL_IN_TEXT if text else _CONTROL).search(value)
    if bad is not None:
        allowed = "" if text else " (tab, newline and carriage return are allowed only in message text)"
        raise InvalidParameter(
            f"{name} must not contain control characters; found U+{ord(bad.group()):04X}{allowed}"
        )
    if len(value) > max_len:
        raise InvalidParameter(f"{name} is longer than {max_len} characters")
    return value


def check_url(name: str, value: str, *, max_len: int = 2048) -> str:
    """An absolute http(s) URL with a host and no whitespace."""
    check_text(name, value, max_len=max_len)
    try:
        parts = urlsplit(value)
        valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a port that is not a number raises ValueError
    except ValueError:
        valid = False
    if not valid or any(c.isspace() for c in value):
        raise InvalidParameter(f"{name} must be an absolute http(s) URL such as https://example.com/hook")
    return value


class Params:
    def __init__(self, data: MultiMapping[Any]) -> None:
        # Twilio parameter names are PascalCase; accept any case from hand-written clients.
        # Only text values are parameters (a multipart file part is not one).
        self._data: MultiDict[str] = MultiDict((k.lower(), v) for k, v in data.items() if isinstance(v, str))

    def __contains__(self, name: builtins.str) -> bool:
        return name.lower() in self._data

    def str(
        self, name: builtins.str, *, required: bool = False, max_len: int = 1024, text: bool = False
    ) -> builtins.str | None:
        """The parameter's text; `text=True` for free text (a message) that may hold line breaks."""
        value = self._data.get(name.lower())
        if value is None or value == "":
            if required:
                raise MissingParameter(f"Missing required parameter {name}")
            return None if value is None else ""
        return check_text(name, value, max_len=max_len, text=text)

    def url(self, name: builtins.str, *, max_len: int = 2048) -> builtins.str | None:
        value = self.str(name, max_len=max_len)
        return check_url(name, value, max_len=max_len) if value else value

    def int(
        self, name: builtins.str, *, minimum: builtins.int = 0, maximum: builtins.int = 2**31 - 1
    ) -> builtins.int | None:
        value = self.str(name, max_len=64)
        if not value:
            return None
        if not _WHOLE_NUMBER.fullmatch(value.strip()):
            raise InvalidParameter(f"{name} must be a whole number, got {value[:40]!r}")
        number = int(value.strip())
        if not minimum <= number <= maximum:
            raise InvalidParameter(f"{name} must be between {minimum} and {maximum}, got {number}")
        return number

    def bool(self, name: builtins.str) -> bool | None:
        value = self.str(name, max_len=64)
        if not value:
            return None
        lowered = value.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise InvalidParameter(f"{name} must be true or false, got {value[:40]!r}")

    def enum(self, name: builtins.str, allowed: Any) -> builtins.str | None:
        value = self.str(name, max_len=64)
        if value is None or value == "":
            return None
        choices = [a.value for a in allowed]
        if value not in choices:
            raise InvalidParameter(f"{name} must be one of {', '.join(choices)}; got {value[:40]!r}")
        return value

    def datetime_ms(self, name: builtins.str) -> builtins.int | None:
        value = self.str(name, max_len=64)
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
        try:
            utc = parsed.astimezone(dt.UTC)
        except (OverflowError, ValueError):
            utc = None
        if utc is None or not MIN_YEAR <= utc.year <= MAX_YEAR:
            raise InvalidParameter(
                f"{name} must be between {MIN_YEAR}-01-01T00:00:00Z and {MAX_YEAR}-12-31T23:59:59Z"
            )
        return int(utc.timestamp() * 1000)

    def list(
        self, name: builtins.str, *, max_len: builtins.int = 2048, text: builtins.bool = False
    ) -> builtins.list[builtins.str]:
        return [check_text(name, v, max_len=max_len, text=text) for v in self._data.getall(name.lower(), [])]


# ------------------------------------------------------------------------------ decoding bodies


def _codec(charset: str | None, what: str) -> str:
    """The codec of a declared charset (UTF-8 when none), if it can carry form-encoded text."""
    if not charset:
        return "utf-8"
    try:
        name = codecs.lookup(charset).name
        ascii_compatible = _ASCII_PROBE.encode(name) == _ASCII_PROBE.encode("ascii")
    except (LookupError, UnicodeError, ValueError):
        name, ascii_compatible = "", False
    if not ascii_compatible:
        raise InvalidParameter(f"the charset {charset[:40]!r} of {what} is not supported; send UTF-8")
    return name


def decode_text(body: bytes, charset: str | None, what: str) -> str:
    """A whole body as text: UTF-8 unless its charset says otherwise; InvalidParameter (naming
    `what`) when the charset is unknown or the bytes are not valid in it."""
    codec = _codec(charset, what)
    try:
        return body.decode(codec)
    except UnicodeDecodeError:
        raise InvalidParameter(f"{what} is not valid {codec}; send it encoded as UTF-8") from None


def _decode(raw: bytes, codec: str, name: str | None) -> str:
    try:
        return raw.decode(codec)
    except (UnicodeDecodeError, LookupError):
        what = f"parameter {name}" if name is not None else "a parameter name"
        raise InvalidParameter(
            f"{what} is not valid {'UTF-8' if codec == 'utf-8' else codec}; send the text encoded as UTF-8"
        ) from None


def parse_form(body: bytes, charset: str | None = None) -> MultiDict[str]:
    """An application/x-www-form-urlencoded body (or a query string) as parse_qsl(...,
    keep_blank_values=True) reads it, except that a byte sequence the charset does not decode is
    refused (InvalidParameter naming the parameter) instead of being replaced with U+FFFD."""
    codec = _codec(charset, "the form")
    body = body.rstrip()
    if codec == "utf-8" and _fast_pairs is not None:
        # The webhooks' hot path: yarl's C unquoter (what aiohttp's request.post() uses). It puts
        # U+FFFD for what does not decode, so only a form free of U+FFFD is taken as it read it;
        # the strict reading below names the parameter at fault (or keeps a U+FFFD sent as such).
        try:
            pairs = _fast_pairs(body.decode(), max_fields=MAX_FIELDS)
        except ValueError:  # UnicodeDecodeError included; or too many fields
            pairs = None
        if pairs is not None and not any("\ufffd" in n or "\ufffd" in v for n, v in pairs):
            return MultiDict(pairs)
    out: MultiDict[str] = MultiDict()
    for field in body.split(b"&"):
        if not field:
            continue
        if len(out) >= MAX_FIELDS:
            raise InvalidParameter(f"a request may carry at most {MAX_FIELDS} parameters")
        raw_name, _, raw_value = field.partition(b"=")
        name = _unquote(raw_name, codec, None)
        out.add(name, _unquote(raw_value, codec, name))
    return out


def _unquote(raw: bytes, codec: str, name: str | None) -> str:
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    return _decode(raw, codec, name)


async def _multipart(request: web.Request) -> MultiDict[str]:
    """The text parts of a multipart/form-data body; a file or binary part is not a parameter."""
    out: MultiDict[str] = MultiDict()
    try:
        reader = await request.multipart()
    except (KeyError, ValueError):
        raise InvalidParameter(
            "a multipart/form-data body needs a boundary (of at most 70 ASCII characters) in its "
            "Content-Type; or send application/x-www-form-urlencoded"
        ) from None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidParameter(
                    "nested multipart bodies are not supported; send one part per parameter"
                )
            if len(out) >= MAX_FIELDS:
                raise InvalidParameter(f"a request may carry at most {MAX_FIELDS} parameters")
            name = part.name
            if not name:
                raise InvalidParameter(
                    'every multipart part needs a name (Content-Disposition: form-data; name="...")'
                )
            data = await part.read(decode=True)
            content_type = part.headers.get(hdrs.CONTENT_TYPE)
            if part.filename or (content_type is not None and not content_type.startswith("text/")):
                continue
            codec = _codec(part.get_charset(default="utf-8"), f"part {name}")
            out.add(name, _decode(bytes(data), codec, name))
    except (InvalidParameter, web.HTTPException):
        raise
    except Exception:
        # aiohttp's reader raises ValueError, RuntimeError, LookupError, AssertionError... on a body
        # that does not follow RFC 7578: all of them mean the same thing to the caller.
        raise InvalidParameter(
            "the multipart/form-data body is malformed; send application/x-www-form-urlencoded"
        ) from None
    return out


async def read_form(request: web.Request) -> MultiDict[str]:
    """The body's form parameters (urlencoded or multipart), decoded strictly; any other content
    type carries none. InvalidParameter (400) when the body cannot be read."""
    content_type = request.content_type
    if content_type == "multipart/form-data":
        return await _multipart(request)
    if content_type not in FORM_TYPES:
        return MultiDict()
    codec = _codec(request.charset, "the request")
    return parse_form(await request.read(), codec)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidParameter("the request body is not valid JSON (UTF-8)") from None
    if not isinstance(obj, dict):
        raise InvalidParameter("the JSON body must be an object")
    return obj


async def read_params(request: web.Request) -> Params:
    if request.content_type == "application/json":
        # JSON is UTF-8 (RFC 8259): a declared charset may only say so.
        if _codec(request.charset, "the JSON body") not in ("utf-8", "ascii"):
            raise InvalidParameter("a JSON body must be UTF-8")
        data: MultiDict[str] = MultiDict()
        for key, value in _json_object(await request.read()).items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    data.add(key, orjson.dumps(item).decode())
                elif isinstance(item, bool):
                    data.add(key, "true" if item else "false")
                elif item is not None:
                    data.add(key, str(item))
        return Params(data)
    return Params(await read_form(request))


def query_params(request: web.Request) -> Params:
    """The query string's parameters, decoded strictly (aiohttp's request.query replaces invalid
    UTF-8 with U+FFFD)."""
    # Percent-escapes as sent; unescaped bytes of the request line come as UTF-8 (or surrogate
    # escapes of what was not UTF-8, which the strict decode below refuses).
    try:
        body = request.rel_url.raw_query_string.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidParameter("the query string is not valid UTF-8") from None
    return Params(parse_form(body))


def iso(ms: int | str | None) -> str | None:
    """Epoch ms -> Twilio's date-time format (what twilio-python's deserializer expects)."""
    if ms in (None, "", 0, "0"):
        return None
    return dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def page_args(request: web.Request) -> PageRequest:
    """The page a list request asks for: `PageToken` (from a previous page's URLs) where given,
    else `Page` as an offset; Twilio's default page size is 50, maximum 1000."""
    query = query_params(request)
    size = query.int("PageSize", minimum=1, maximum=MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE
    page = query.int("Page", minimum=0, maximum=10_000_000) or 0
    token = query.str("PageToken", max_len=200)
    return PageRequest(size=size, page=page, cursor=Cursor.parse(token) if token else None)
