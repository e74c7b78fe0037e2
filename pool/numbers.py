"""Phone numbers in and out of the pool: parse, classify and mask (pure functions, no I/O).

`parse_participant` checks the real number of a customer or courier, `parse_proxy_number` a Twilio
number added to a Service. Both return a `Number` whose `e164` is the only form stored or keyed on.

Accepted input: E.164 ("+14155550123") and the usual human spellings of it (spaces, dashes, dots,
parentheses, a "(0)" trunk prefix: "+44 (0)7400 123456"); the international prefix "00" is read as
"+". A number without either is refused: "4155550123" could be any country, and Twilio identifiers
are E.164. Letters are refused too (phonenumbers would read "1-800-FLOWERS" as digits).

Refused participants (89001, toll-fraud and safety, see `_REFUSED_TYPES`):
- emergency numbers (911, 112, 999, 000, 110, 119, 15, 17, 18...) and short codes: anything of 2-6
  digits, with or without "+" or a country code ("+1 911", "+44 999"), is never a subscriber we
  could call or text on someone's behalf. Short-number metadata only understands national dialling
  ("911", not "+911"), so it is asked about the bare digits, only to word the message.
  A *valid* full number is never called short: Niue (+683 7290) or the Falklands (+500 31234) have
  valid 4-5 digit subscriber numbers.
- premium-rate and shared-cost numbers (US/CA 900, UK 09x and 084/087, FR 081x/089x, DE 0180...):
  a call or text to them pays a share to whoever holds the number, the classic way to turn a
  masked-number service into a revenue pump (IRSF).
- non-geographic "international" numbers (+800, +808, +870, +881, +882, +883, +979): satellite and
  international networks are high-cost destinations and there is no country to match a pool number.
- numbers outside the Service's allowed countries, when it has a list.

Region key (`Number.region`, how GeoMatchLevel=country matches a participant to pool numbers):
phonenumbers' `region_code_for_number`, which reads the NANP area code (Jamaica +1 876 is "JM",
Canada +1 416 is "CA"), folded so numbers of one numbering plan that dial each other domestically
share a key:
- GG, IM, JE -> GB (Crown Dependencies, UK numbering plan);
- PR, VI, GU, AS, MP, UM -> US (US territories, US domestic numbering and rates);
- AX -> FI, SJ -> NO, CC/CX -> AU, VA -> IT, BL/MF -> GP, EH -> MA: territories inside another
  plan; phonenumbers itself often cannot tell them apart (Saint-Martin's example fixed line reads
  as "BL", Christmas Island's mobile as "AU"), so separate keys would split one pool at random.
Every other NANP country (CA, JM, BS, TT, DO...) keeps its own key: a US proxy number is an
international number to its people. Countries that only share a calling code in distinct ranges
(RU/KZ, RE/YT, CW/BQ) keep theirs too. `Number.iso_country` keeps the unfolded code ("JE",
"PR"); the allow-list is checked against the folded region, so "GB" admits Jersey.

`Number.area` is the NANP area code ("415") for +1 numbers (GeoMatchLevel=area-code), else "".

Speed: this is on the session-creation hot path. A phonenumbers parse + validate costs 50-130 us
(a +1 number walks the NANP countries to find its region; Python 3.11), and participants recur
(the same couriers, the same customers), so successful parses are kept in a bounded LRU cache
keyed by the raw string (a hit costs well under 1 us). Errors are not cached: a flood of junk
costs CPU, never memory.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberType

from core.errors import (
    COUNTRY_NOT_ALLOWED,
    INVALID_PARAMETER,
    PARTICIPANT_REFUSED,
    InvalidParameter,
    PoolError,
)

__all__ = ["Number", "parse_participant", "parse_proxy_number", "mask", "split_channel", "WHATSAPP"]

INVALID_NUMBER: Final = INVALID_PARAMETER  # Twilio's Invalid Parameter, naming Identifier
REFUSED_NUMBER: Final = PARTICIPANT_REFUSED

# Longest input worth parsing: E.164 is at most 15 digits; generous room for separators.
_MAX_INPUT_CHARS: Final = 40
# Cached successful parses (each entry well under 1 KB).
_CACHE_SIZE: Final = 65_536
# Inputs of this many digits are short codes or emergency numbers, never subscribers.
_SHORT_DIGITS: Final = range(2, 7)

_SEPARATORS: Final = str.maketrans("", "", " \t\u00a0-.()/")
_DIGITS: Final = frozenset("0123456789")

_REGION_FOLD: Final[dict[str, str]] = {
    "GG": "GB",
    "IM": "GB",
    "JE": "GB",
    "PR": "US",
    "VI": "US",
    "GU": "US",
    "AS": "US",
    "MP": "US",
    "UM": "US",
    "AX": "FI",
    "SJ": "NO",
    "CC": "AU",
    "CX": "AU",
    "VA": "IT",
    "BL": "GP",
    "MF": "GP",
    "EH": "MA",
}

# Types refused as participants and pool numbers. PREMIUM_RATE and SHARED_COST are surcharged by
# design with a share to the number holder: toll-fraud targets. UAN is allowed: it is mostly
# geographic-rate business numbers (UK 03, FR 0806), which a customer may legitimately use.
_REFUSED_TYPES: Final[dict[int, str]] = {
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost (surcharged) number",
}


@dataclass(frozen=True, slots=True)
class Number:
    e164: str  # "+14155550123"
    region: str  # pool region key: folded ISO country ("GB" for a Jersey number)
    area: str  # NANP area code ("415") for +1 numbers, else ""
    iso_country: str  # phonenumbers' own region code ("JE", "PR", "US"...)


class _Rejected(Exception):
    """Internal: why a string is not acceptable; each public function words its own error."""

    def __init__(self, reason: str, *, refused: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused  # True: a real but refused number (89001); False: not a number (20422)


# Twilio's channel address prefix for a WhatsApp user ("whatsapp:+14155550123").
WHATSAPP: Final = "whatsapp:"


def split_channel(raw: str) -> tuple[str, str]:
    """("whatsapp:", "+1...") for a WhatsApp channel address, ("", raw) for anything else."""
    if isinstance(raw, str) and raw[:9].lower() == WHATSAPP:
        return WHATSAPP, raw[9:]
    return "", raw


def parse_participant(raw: str, *, allowed_countries: frozenset[str] | None = None) -> Number:
    """A participant identifier as a `Number`.

    Raises PoolError 20422 when `raw` is not a valid phone number, 89001 when it is one that is
    refused (emergency, short code, premium-rate, shared-cost, non-geographic), 89002 when its
    region is not in `allowed_countries`, a set of region keys such as {"US", "GB"}."""
    try:
        number = _parse(raw)
    except _Rejected as e:
        if e.refused:
            raise PoolError(
                f"Identifier {_shown(raw)} is refused: {e.reason}.", code=REFUSED_NUMBER
            ) from None
        raise PoolError(
            f"Identifier {_shown(raw)} is not a valid phone number: {e.reason}. "
            'Send it in E.164 form, e.g. "+14155550123".',
            code=INVALID_NUMBER,
        ) from None
    if allowed_countries is not None and number.region not in allowed_countries:
        allowed = ", ".join(sorted(allowed_countries)) or "none"
        raise PoolError(
            f"Identifier {mask(number.e164)} is in {number.region}, which this Service does not "
            f"allow (allowed countries: {allowed}).",
            code=COUNTRY_NOT_ALLOWED,
        )
    return number


def parse_proxy_number(raw: str) -> Number:
    """A pool (Twilio) number as a `Number`. Raises InvalidParameter (20422) naming PhoneNumber."""
    try:
        return _parse(raw)
    except _Rejected as e:
        if e.refused:
            raise InvalidParameter(
                f"PhoneNumber {_shown(raw)} cannot be a proxy number: {e.reason}."
            ) from None
        raise InvalidParameter(
            f"PhoneNumber {_shown(raw)} is not a valid phone number: {e.reason}. "
            'Send it in E.164 form, e.g. "+14155550123".'
        ) from None


def mask(number: object) -> str:
    """`number` fit for a log line: "+" and the country code when recognisable, the last 4 digits,
    a "*" per other digit ("+14155550123" -> "+1******0123"). At least 4 digits are always hidden,
    so a short code shows fewer (or none) of its own. Never raises, whatever it is given."""
    try:
        text = number if isinstance(number, str) else str(number)
        digits = "".join(c for c in text[:64] if c in _DIGITS)
        if not digits:
            return "***" if text else ""
        stripped = text.lstrip()
        plus = stripped.startswith("+") or stripped.startswith("00")
        if stripped.startswith("00"):
            digits = digits[2:] or digits
        tail = min(4, max(0, len(digits) - 4))
        head = _country_code_prefix(digits) if plus else ""
        if len(digits) - len(head) - tail < 4:
            head = ""
        hidden = len(digits) - len(head) - tail
        return ("+" if plus else "") + head + "*" * min(hidden, 12) + digits[len(digits) - tail :]
    except Exception:  # a hostile __str__, or anything else: a log line must not fail
        return "***"


def _parse(raw: str) -> Number:
    if not isinstance(raw, str):
        raise _Rejected("expected a string", refused=False)
    if len(raw) > _MAX_INPUT_CHARS:
        raise _Rejected(f"longer than {_MAX_INPUT_CHARS} characters", refused=False)
    return _parse_cached(raw)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_cached(raw: str) -> Number:
    text = raw.strip().translate(_SEPARATORS)
    plus = text.startswith("+")
    digits = text[1:] if plus else text
    if not digits:
        raise _Rejected("it has no digits", refused=False)
    if not _DIGITS.issuperset(digits):
        raise _Rejected('only digits, "+" and spaces, dashes, dots or parentheses are allowed', refused=False)
    # Short codes before the "+" rule: "911", "+911", "000" are never subscribers, whatever the form.
    if len(digits) in _SHORT_DIGITS:
        raise _Rejected(_short_reason(digits, plus=plus), refused=True)
    if not plus and digits.startswith("00"):  # the international prefix: "0044..." is "+44..."
        plus, digits = True, digits[2:]
        if len(digits) in _SHORT_DIGITS:
            raise _Rejected(_short_reason(digits, plus=True), refused=True)
    if not plus:
        raise _Rejected('it has no "+" and country code', refused=False)

    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        raise _Rejected("no such country code, or too short or long", refused=False) from None
    nsn = phonenumbers.national_significant_number(parsed)
    # number_type() is UNKNOWN exactly when is_valid_number() is False (both match the national
    # number against the region's patterns); one call instead of two halves the cost of a +1
    # number, whose region lookup walks the 25 NANP countries.
    kind = phonenumbers.number_type(parsed)
    if kind == PhoneNumberType.UNKNOWN:
        if len(nsn) in _SHORT_DIGITS:
            # "+1 234567": a country code in front of a short code.
            raise _Rejected(_short_reason(digits, plus=True), refused=True)
        raise _Rejected("no such number in that country's numbering plan", refused=False)

    iso_country = phonenumbers.region_code_for_number(parsed)
    if iso_country is None or iso_country == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY:
        raise _Rejected("a non-geographic international number (high cost, no country)", refused=True)
    refused_type = _REFUSED_TYPES.get(kind)
    if refused_type is not None:
        raise _Rejected(refused_type, refused=True)

    country_code = parsed.country_code
    return Number(
        e164=f"+{country_code}{nsn}",
        region=_REGION_FOLD.get(iso_country, iso_country),
        area=nsn[:3] if country_code == 1 else "",
        iso_country=iso_country,
    )


def _short_reason(digits: str, *, plus: bool) -> str:
    """Why a short string is refused: an emergency number, else a short code. Only the wording
    depends on it (every 2-6 digit string is refused).

    Short-number metadata reads national dialling only, so "+1 911" is asked as "911" in the
    NANP countries and "+911" as "911" anywhere (someone typed "+" before their local emergency
    number). Exact matches only: the prefix match of `connects_to_emergency_number` would call
    "55555" an emergency number (Somalia's 555)."""
    if _emergency_pattern(None).fullmatch(digits):
        return "an emergency number"
    country_code = _country_code_prefix(digits) if plus else ""
    if country_code and _emergency_pattern(int(country_code)).fullmatch(digits[len(country_code) :]):
        return "an emergency number"
    return "a short code or emergency number, not a subscriber number"


@functools.cache
def _emergency_pattern(country_code: int | None) -> re.Pattern[str]:
    """The emergency numbers of the regions of `country_code` (of every region if None) as one
    pattern: the same answers as `shortnumberinfo.is_emergency_number` region by region (checked
    for every 2-3 digit string) in one match instead of up to 240, so refusing junk stays cheap.
    Built on first use (~50 ms for all regions)."""
    regions: Iterable[str] = (
        phonenumbers.SUPPORTED_SHORT_REGIONS
        if country_code is None
        else phonenumbers.region_codes_for_country_code(country_code)
    )
    patterns: set[str] = set()
    for region in regions:
        metadata = PhoneMetadata.short_metadata_for_region(region)
        if metadata is not None and metadata.emergency is not None:
            if metadata.emergency.national_number_pattern:
                patterns.add(metadata.emergency.national_number_pattern)
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{p})" for p in sorted(patterns)))


def _country_code_prefix(digits: str) -> str:
    """The leading country calling code of `digits` (1-3 digits, no two codes share a prefix)."""
    for size in (1, 2, 3):
        if int(digits[:size] or 0) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return digits[:size]
    return ""


def _shown(raw: object) -> str:
    """`raw` quoted for an error message, cut so a huge or hostile value is never echoed whole."""
    if not isinstance(raw, str):
        return f"of type {type(raw).__name__}"
    if len(raw) > _MAX_INPUT_CHARS:
        return f"{raw[:24]!r}... ({len(raw)} characters)"
    return repr(raw)
