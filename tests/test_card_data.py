"""The card-data scanner: card numbers and CVVs are found; ordinary identifiers are not."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.card_data import find_card_data, holds_card_number, luhn_ok

CARDS = ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "378282246310005",
         "6011111111111117", "3530111333300000", "4222222222222"]


@pytest.mark.parametrize("number", CARDS)
def test_card_numbers_are_found_alone_and_in_text(number: str) -> None:
    for text in (number, f"pay with {number} today", f"card:{number}.", f"({number})", f'"{number}"'):
        assert holds_card_number(text), text


@pytest.mark.parametrize("text", ["4111111111111112", "ref4111111111111111", "4111111111111111abc", "123456789012",
                                  "41111111111111111111", "2026-11-22 12:00:00"])
def test_non_cards_are_not_found(text: str) -> None:
    assert not holds_card_number(text)


@settings(max_examples=2000, deadline=None)
@given(st.uuids())
def test_uuids_are_never_card_numbers(value: uuid.UUID) -> None:
    """Digit groups of a UUID pass Luhn one time in ten: they must not count as card numbers."""
    for text in (str(value), str(value).upper(), f"id {value} end", value.hex):
        assert not holds_card_number(text), text


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789", min_size=32, max_size=32))
def test_all_digit_uuids_are_never_card_numbers(digits: str) -> None:
    text = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    assert not holds_card_number(text)


def test_find_card_data_reports_the_location_never_the_value() -> None:
    assert find_card_data({"lines": [{"note": "x", "pan": "4111 1111 1111 1111"}]}) == ("lines", 0, "pan")
    assert find_card_data({"payment": {"CVC2": "123"}}) == ("payment", "CVC2")
    assert find_card_data({"n": 4111111111111111}) == ("n",)
    assert find_card_data({"ids": [str(uuid.uuid4()) for _ in range(50)], "title": "ok"}) is None


def test_luhn() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
