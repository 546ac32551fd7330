"""The card-data scanner: card numbers and CVVs are found; ordinary identifiers are not."""

from __future__ import annotations

import logging
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.web.card_data import (
    MARKER,
    find_card_data,
    holds_card_number,
    install_log_redaction,
    luhn_ok,
    normalise,
    redact_card_numbers,
)

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


# --- numbers in disguise ---------------------------------------------------------------------------

PAN = "4111111111111111"
FULL_WIDTH, ARABIC_INDIC, DEVANAGARI = 0xFF10, 0x0660, 0x0966


def _script(digits: str, zero: int) -> str:
    return "".join(chr(zero + int(d)) for d in digits)


DISGUISES = {
    "dots": "4111.1111.1111.1111",
    "slashes": "4111/1111/1111/1111",
    "underscores": "4111_1111_1111_1111",
    "repeated separators": "4111  --  1111 ..  1111__1111",
    "no-break spaces": "4111\u00a01111\u20071111\u202f1111",
    "zero-width": "4111\u200b1111\u20601111\ufeff1111",
    "soft hyphens": "4\u00ad1\u00ad11\u00ad1111\u00ad1111\u00ad1111",
    "en and em dashes": "4111\u20131111\u20141111\u22121111",
    "full-width digits": _script(PAN, FULL_WIDTH),
    "Arabic-Indic digits": _script(PAN, ARABIC_INDIC),
    "Devanagari digits": _script(PAN, DEVANAGARI),
    "mixed scripts": _script("4111", FULL_WIDTH) + " " + _script("1111", ARABIC_INDIC) + "-1111" + _script("1111", DEVANAGARI),
    "percent-encoded": "4111%201111%C2%A01111%E2%80%8B1111",
    "percent-encoded digits": "%34%31%31%31111111111111",
    "JSON escapes": "4111\\u00a01111\\u00a01111\\u00a01111",
    "HTML entities": "&#52;111&nbsp;1111&#x2d;1111 1111",
    "combining marks": "4\u03041\u03041\u03041111111111111",
    "control characters": "4\x001\x001\x001\x00111111111111",
    "plus signs": "4111+1111+1111+1111",
}


@pytest.mark.parametrize("disguise", DISGUISES)
def test_card_numbers_in_disguise_are_found(disguise: str) -> None:
    text = DISGUISES[disguise]
    for sample in (text, f"pay with {text} today", f"card:{text}.", f"{text}.txt"):
        assert holds_card_number(sample), sample
        assert find_card_data({"note": sample}) == ("note",)


@pytest.mark.parametrize("disguise", DISGUISES)
def test_redaction_removes_the_number_and_keeps_the_rest(disguise: str) -> None:
    text = f'GET /api/records/{DISGUISES[disguise]}/x "ua {DISGUISES[disguise]}"'
    redacted = redact_card_numbers(text)
    assert redacted.startswith("GET /api/records/") and redacted.endswith('"') and "/x " in redacted
    assert redacted.count(MARKER) == 2 and not holds_card_number(redacted)
    assert PAN not in normalise(redacted).replace(" ", "").replace("-", "")


@pytest.mark.parametrize("text", [
    "ref-4111111111111111", "ref\u20134111111111111111", "4111111111111111-ref", "ref\uff14\uff11\uff11\uff11111111111111",
    "4111.1111.1111.1112", "4111\u00a01111\u00a01111", "4111,1111,1111,1111", "4111\t1111\t1111\t1111",
    "4111 1111\n1111 1111", "2026.11.22 12:00:00", "v1.2.3.4", "+44 20 7946 0958",
])
def test_lookalikes_are_not_card_numbers(text: str) -> None:
    assert not holds_card_number(text)
    assert redact_card_numbers(text) == text


@pytest.mark.parametrize("key", ["cvv", "CVC2", "card_cvv2", "cvn", "cvv_code", "card-verification", "cardVerificationValue",
                                 "securityCode", "card.security_code", "\uff43\uff56\uff56", "c\u200bvv", "cid", "csc",
                                 "CardCVV2", "cardcvv2", "pan_cvc", "CVV2Code"])
def test_security_code_keys_are_found(key: str) -> None:
    assert find_card_data({"payment": {key: "123"}}) == ("payment", key)


@pytest.mark.parametrize("key", ["cid_ref", "content_id", "csc_team", "verification", "security", "card_brand", "code", "rcvCount",
                                 "rcv_count", "cavity"])
def test_ordinary_keys_are_not_security_codes(key: str) -> None:
    assert find_card_data({key: "123"}) is None


def _luhn_complete(body: str) -> str:
    """`body` with the check digit that makes it pass Luhn (computed here, not by the scanner)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = sum(divmod(d * 2, 10))
        total += d
    return body + str((10 - total % 10) % 10)


SEPARATORS = [" ", "-", ".", "/", "_", "+", "\u00a0", "\u2007", "\u202f", "\u3000", "\u200b", "\u2060", "\ufeff", "\u00ad",
              "\u2013", "\u2014", "\u2010", "\u2011", "\u2212", "\uff0e", "\uff0f", "\u00b7", "%20", "\\u00a0", "&nbsp;", "\x00"]
DIGIT_FORMS = [lambda d: d, lambda d: chr(FULL_WIDTH + int(d)), lambda d: chr(ARABIC_INDIC + int(d)),
               lambda d: chr(DEVANAGARI + int(d)), lambda d: chr(0x1D7CE + int(d)), lambda d: f"%3{d}", lambda d: f"&#{48 + int(d)};"]


@st.composite
def disguised_pans(draw: st.DrawFn) -> tuple[str, str]:
    body = draw(st.text(alphabet="0123456789", min_size=12, max_size=18))
    pan = _luhn_complete(body)
    parts = []
    for index, digit in enumerate(pan):
        if index:
            parts.append("".join(draw(st.lists(st.sampled_from(SEPARATORS), max_size=3))))
        parts.append(draw(st.sampled_from(DIGIT_FORMS))(digit))
    return pan, "".join(parts)


@settings(max_examples=400, deadline=None)
@given(disguised_pans(), st.sampled_from(["", "card ", "pay: ", "(", "/api/x/", '"']),
       st.sampled_from(["", " today", ".", ")", ".csv", '"', "/y"]))
def test_a_valid_number_in_any_disguise_is_always_found_and_redacted(case: tuple[str, str], before: str, after: str) -> None:
    pan, disguised = case
    text = before + disguised + after
    assert holds_card_number(text), ascii(text)
    redacted = redact_card_numbers(text)
    assert MARKER in redacted and not holds_card_number(redacted), ascii(redacted)
    assert redacted.startswith(before) and redacted.endswith(after)


@settings(max_examples=1000, deadline=None)
@given(st.uuids(), st.sampled_from(["{}", "id {} end", "/api/records/{}", "{}.txt", "\uff08{}\uff09"]))
def test_uuids_are_never_flagged_or_redacted(value: uuid.UUID, template: str) -> None:
    for form in (str(value), str(value).upper(), value.hex):
        text = template.format(form)
        assert not holds_card_number(text) and redact_card_numbers(text) == text


def test_scanner_is_linear_on_inputs_built_to_backtrack() -> None:
    """Each of these is a few hundred thousand characters; a scanner that backtracks or restarts
    inside a run would need on the order of 10^10 steps and never finish."""
    for text in ("1." * 200_000 + "a", "1" + " " * 400_000 + "x", ("1-" * 12 + "a") * 20_000, "%3" * 200_000,
                 ("4111 " * 3 + "x ") * 40_000, "\u0661\u200b" * 200_000 + "a"):
        assert not holds_card_number(text)
        assert redact_card_numbers(text) == text


# --- logs ----------------------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_every_log_record_is_redacted_once_installed() -> None:
    previous = logging.getLogRecordFactory()
    collect = _Collect()
    logger = logging.getLogger("anything.at.all")
    logger.addHandler(collect)
    logger.propagate = False
    try:
        install_log_redaction()
        install_log_redaction()  # a second install does not wrap twice
        logger.warning("card %s seen", "4111\u00a01111\u00a01111\u00a01111")
        logger.warning("as a number %d", 4111111111111111)
        logger.warning("split %s%s", "41111111", "11111111")
        logger.warning("mapping %(pan)s", {"pan": "5555-5555-5555-4444"})
        try:
            int("4111 1111 1111 1111 x")
        except ValueError:
            logger.exception("parse failed")
        logger.warning("order %s for %s", "4111111111111112", str(uuid.UUID(int=0x4111111111111111)))
    finally:
        logging.setLogRecordFactory(previous)
        logger.removeHandler(collect)
    text = "\n".join(collect.lines)
    assert text.count(MARKER) >= 5 and not holds_card_number(text), text
    assert "parse failed" in text and "ValueError: invalid literal" in text
    assert "4111111111111112" in text and "00000000-0000-0000-4111-111111111111" in text


@pytest.mark.parametrize("key", ["", "-", "_", "  ", "\u200b", "__--__"])
def test_keys_without_words_are_never_an_error(key: str) -> None:
    assert find_card_data({key: ""}) is None
    assert find_card_data({key: "x"}) is None


def test_only_clean_texts_are_remembered_and_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Log lines repeat the same ids request after request, so texts found clean are remembered;
    a text that held a card number never is (that would keep the number in memory), and the
    answer for it is the redacted one every time."""
    from shared.web import card_data

    monkeypatch.setattr(card_data, "_CLEAN_MAX", 4)
    card_data._clean.clear()
    request_id = "0f9e4b1c-2d3a-4e5f-8a7b-1234567890ab"
    assert card_data.redact_card_numbers(request_id) == request_id
    assert request_id in card_data._clean
    dirty = "paid with 4111 1111 1111 1111 today"
    for _ in range(2):
        assert card_data.redact_card_numbers(dirty) == f"paid with {card_data.MARKER} today"
    assert dirty not in card_data._clean and not any("4111" in t for t in card_data._clean)
    for n in range(10):
        card_data.redact_card_numbers(f"{n}{request_id}")
        assert len(card_data._clean) <= 4
