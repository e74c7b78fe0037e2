"""Participant and pool numbers: what is accepted, what is refused and why, and the region a number
is matched on. Pure functions: no Redis, no Postgres."""

from __future__ import annotations

import phonenumbers
import pytest

from core.errors import InvalidParameter, PoolError
from pool.numbers import Number, mask, parse_participant, parse_proxy_number

INVALID = 20422  # Twilio's Invalid Parameter
REFUSED = 89001  # Maskline: Participant Refused
NOT_ALLOWED = 89002  # Maskline: Participant Country Not Allowed


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+14155550123", "+14155550123"),
        ("+1 (415) 555-0123", "+14155550123"),
        ("+1.415.555.0123", "+14155550123"),
        ("  +1 415 555 0123\n", "+14155550123"),
        ("001 415 555 0123", "+14155550123"),
        ("+44 7400 123456", "+447400123456"),
        ("+44 (0)7400 123456", "+447400123456"),
        ("0044 7400 123456", "+447400123456"),
        ("+49 30 1234 5678", "+493012345678"),
    ],
)
def test_human_formats_are_normalised_to_e164(raw: str, e164: str) -> None:
    assert parse_participant(raw).e164 == e164


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "+",
        "4155550123",  # no country code: could be anywhere
        "+1415555012",  # one digit short
        "+1 415 CALL NOW",
        "+1 800 FLOWERS",
        "+999 1234567890",  # no such country code
        "++14155550123",
        "+1 415 555 0123 ext 7",
        "+1 911 555 0123",  # 911 is not an area code
    ],
)
def test_what_is_not_a_phone_number_is_20422(raw: str) -> None:
    with pytest.raises(PoolError) as e:
        parse_participant(raw)
    assert e.value.code == INVALID
    assert e.value.status == 400
    assert repr(raw) in e.value.message  # shows what it got...
    assert "E.164" in e.value.message  # ...and what to send instead


def test_a_non_string_identifier_is_20422() -> None:
    for raw in (None, 14155550123, b"+14155550123"):
        with pytest.raises(PoolError) as e:
            parse_participant(raw)  # type: ignore[arg-type]
        assert e.value.code == INVALID


def test_a_huge_identifier_is_refused_without_being_echoed() -> None:
    raw = "+1" + "5" * 5000
    with pytest.raises(PoolError) as e:
        parse_participant(raw)
    assert e.value.code == INVALID
    assert len(e.value.message) < 200
    assert "5002 characters" in e.value.message


@pytest.mark.parametrize(
    "raw",
    ["911", "+911", "112", "+112", "999", "+44 999", "+1 911", "000", "110", "119", "17", "0044 999"],
)
def test_emergency_numbers_are_refused_89001(raw: str) -> None:
    with pytest.raises(PoolError) as e:
        parse_participant(raw)
    assert e.value.code == REFUSED
    assert "emergency" in e.value.message


@pytest.mark.parametrize("raw", ["55555", "+55555", "08", "24273", "+1 234567", "466453"])
def test_short_codes_are_refused_89001(raw: str) -> None:
    with pytest.raises(PoolError) as e:
        parse_participant(raw)
    assert e.value.code == REFUSED
    assert "short code" in e.value.message


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("+1 900 234 5678", "premium-rate"),
        ("+1 900 212 3456", "premium-rate"),
        ("+44 909 876 0000", "premium-rate"),
        ("+44 843 123 4567", "premium-rate"),  # UK 084x service numbers carry a surcharge
        ("+33 8 10 12 34 56", "shared-cost"),
        ("+800 1234 5678", "non-geographic"),
    ],
)
def test_toll_fraud_destinations_are_refused_89001(raw: str, why: str) -> None:
    with pytest.raises(PoolError) as e:
        parse_participant(raw)
    assert e.value.code == REFUSED
    assert why in e.value.message


def test_business_and_small_country_numbers_are_accepted() -> None:
    # UK 03 numbers are charged like landlines; Niue and the Falklands have 4-5 digit numbers
    # that must not be mistaken for short codes.
    assert parse_participant("+44 300 123 4567").region == "GB"
    assert parse_participant("+683 7290") == Number(e164="+6837290", region="NU", area="", iso_country="NU")
    assert parse_participant("+500 31234").region == "FK"


def test_us_number_has_its_area_code() -> None:
    assert parse_participant("+1 415 555 0123") == Number(
        e164="+14155550123", region="US", area="415", iso_country="US"
    )


def test_jersey_mobile_matches_uk_pool_numbers() -> None:
    assert parse_participant("+44 7797 712345") == Number(
        e164="+447797712345", region="GB", area="", iso_country="JE"
    )


def test_puerto_rico_matches_us_pool_numbers() -> None:
    assert parse_participant("+1 787 234 5678") == Number(
        e164="+17872345678", region="US", area="787", iso_country="PR"
    )


def test_jamaica_and_canada_keep_their_own_region() -> None:
    jamaica = parse_participant("+1 876 210 1234")
    assert (jamaica.region, jamaica.area, jamaica.iso_country) == ("JM", "876", "JM")
    canada = parse_participant("+1 416 555 0123")
    assert (canada.region, canada.area, canada.iso_country) == ("CA", "416", "CA")


def test_every_countrys_example_numbers_are_accepted_in_a_consistent_region() -> None:
    fold = {"GG": "GB", "IM": "GB", "JE": "GB", "PR": "US", "VI": "US", "GU": "US", "AS": "US"}
    fold |= {"MP": "US", "UM": "US", "AX": "FI", "SJ": "NO", "CC": "AU", "CX": "AU", "VA": "IT"}
    fold |= {"BL": "GP", "MF": "GP", "EH": "MA"}
    for iso in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(iso, kind)
            if example is None:
                continue
            raw = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            assert parse_participant(raw).region == fold.get(iso, iso), raw


def test_allowed_countries_refuse_other_countries_89002() -> None:
    with pytest.raises(PoolError) as e:
        parse_participant("+1 876 210 1234", allowed_countries=frozenset({"US", "CA"}))
    assert e.value.code == NOT_ALLOWED
    assert "JM" in e.value.message
    assert "CA, US" in e.value.message
    assert "2101234" not in e.value.message  # the number itself is masked


def test_allowed_countries_match_on_the_folded_region() -> None:
    assert parse_participant("+44 7797 712345", allowed_countries=frozenset({"GB"})).iso_country == "JE"
    assert parse_participant("+1 787 234 5678", allowed_countries=frozenset({"US"})).iso_country == "PR"
    with pytest.raises(PoolError) as e:
        parse_participant("+1 415 555 0123", allowed_countries=frozenset())
    assert e.value.code == NOT_ALLOWED


def test_an_invalid_number_is_20422_even_with_an_allow_list() -> None:
    with pytest.raises(PoolError) as e:
        parse_participant("+1415555012", allowed_countries=frozenset({"US"}))
    assert e.value.code == INVALID


def test_repeated_participants_give_the_same_answer() -> None:
    first = parse_participant("+1 (415) 555-0123")
    assert parse_participant("+1 (415) 555-0123") == first
    assert parse_participant("+14155550123") == first
    with pytest.raises(PoolError):
        parse_participant("+1 (415) 555-0123", allowed_countries=frozenset({"GB"}))


def test_proxy_number_is_parsed_like_a_participant() -> None:
    assert parse_proxy_number("+1 415 555 0123") == Number(
        e164="+14155550123", region="US", area="415", iso_country="US"
    )
    assert parse_proxy_number("+447400123456").region == "GB"


@pytest.mark.parametrize("raw", ["", "4155550123", "+1415555012", "911", "+1 900 234 5678", "55555"])
def test_bad_proxy_number_is_invalid_parameter_naming_phone_number(raw: str) -> None:
    with pytest.raises(InvalidParameter) as e:
        parse_proxy_number(raw)
    assert e.value.code == 20422
    assert e.value.status == 400
    assert "PhoneNumber" in e.value.message


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+14155550123", "+1******0123"),
        ("+1 (415) 555-0123", "+1******0123"),
        ("+447400123456", "+44******3456"),
        ("0044 7400 123456", "+44******3456"),
        ("4155550123", "******0123"),
        ("911", "***"),
        ("+1 911", "+****"),
        ("", ""),
        ("client:alice", "***"),
    ],
)
def test_mask_keeps_country_code_and_last_four_digits(number: str, masked: str) -> None:
    assert mask(number) == masked


class _Hostile:
    def __str__(self) -> str:
        raise RuntimeError("boom")


@pytest.mark.parametrize("thing", [None, 12, 3.5, b"+14155550123", _Hostile(), "+" * 10_000, "9" * 10_000])
def test_mask_never_raises_nor_reveals_a_whole_number(thing: object) -> None:
    masked = mask(thing)
    assert isinstance(masked, str)
    assert len(masked) <= 20
    assert "14155550123" not in masked
