"""Card data never enters Custos: requests holding a card number or a CVV are refused.

PCI DSS scope stays with the payment gateway: Custos keeps only a gateway token, brand,
last four digits and expiry. The endpoint wrapper runs `find_card_data` over every JSON
body and query string before anything is parsed further, stored or logged; attachments
run `holds_card_number` over text bodies and file names before anything is stored; the
refusal names the location but never the value. What cannot be refused (a URL path, a
User-Agent, any log message) is passed through `redact_card_numbers`, and
`install_log_redaction` applies that to every log record the process creates.

Text is normalised before it is scanned, so a number in disguise is still a number:
percent-, backslash- and HTML-escapes are decoded, then NFKC (full-width digits, no-break
spaces), every Unicode decimal digit becomes its ASCII digit, every space becomes " ", every
dash "-", dot-likes ".", slash-likes "/", and format characters, combining marks and control
characters other than line breaks and tabs are removed. A candidate is then a whole run of
digits joined by any number of " -._/+" that is not glued to a letter (directly or through
a dash) and holds 13-19 digits passing Luhn.
"""

from __future__ import annotations

import functools
import html.entities
import logging
import re
import sys
import unicodedata
from collections.abc import Iterator
from typing import Any

MARKER = "[card-number-redacted]"

# A run of at least 13 digits with separators between them. Matches start only where a
# maximal run starts (a shorter run fails at its first digit and so at every later one), the
# run is taken whole (possessive) and each character is looked at a bounded number of times.
_RUN = re.compile(r"[0-9](?:[ ._/+-]*+[0-9]){12,}+")
_ASCII_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f]+")
_ESCAPE = re.compile(
    r"(?:%[0-9A-Fa-f]{2})++|\\x[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8}"
    r"|&#[0-9]{1,7};|&#[xX][0-9A-Fa-f]{1,6};|&[A-Za-z][A-Za-z0-9]{1,31};"
)
_UNIT = re.compile(_ESCAPE.pattern + "|.", re.DOTALL)
_NO_SEPARATORS = str.maketrans("", "", " ._/+-")
_KEEP_CONTROLS = frozenset("\t\n\x0b\x0c\r\x1c\x1d\x1e\x85")
_DOTS = "\u00b7\u2022\u2027\u2219\u22c5\u30fb\uff65"
_SLASHES = "\u2044\u2215\u29f8"
_CVV_KEYS = frozenset({"cvv", "cvc", "cvv2", "cvc2", "cvn", "cvn2", "cvd", "cid", "csc", "cav2", "securitycode",
                       "cardsecuritycode", "cardverificationvalue", "cardverificationcode", "cardcvv", "cardcvc"})
# Words of a key that name a card security code ("card_cvv2", "cvv_code", "CardCVC"): a word,
# not a substring, so that "rcvCount" is not one. "cid" and "csc" only count as the whole key:
# as words they name other things (content ids).
_CVV_WORDS = re.compile(r"^(?:cvv|cvc|cvn|cvd|cav)[0-9]?$")
_KEY_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Phrases that name one wherever they appear in the squashed key ("card-verification").
_CVV_PHRASES = ("securitycode", "cardverification", "verificationvalue", "verificationcode", "cardsecurity",
                "cardcvv", "cardcvc", "cardcvn")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@functools.cache
def _table() -> dict[int, int | None]:
    """The character map applied after NFKC; built once, on first use."""
    table: dict[int, int | None] = {}
    for code in range(0x80, sys.maxunicode + 1):
        ch = chr(code)
        category = unicodedata.category(ch)
        if category == "Nd":
            table[code] = 48 + unicodedata.decimal(ch)
        elif category == "Zs":
            table[code] = 32
        elif category == "Pd" or ch == "\u2212":
            table[code] = 45
        elif category in ("Cf", "Mn", "Me") or (category == "Cc" and ch not in _KEEP_CONTROLS):
            table[code] = None
    for ch in _DOTS:
        table[ord(ch)] = 46
    for ch in _SLASHES:
        table[ord(ch)] = 47
    for code in range(0x80):
        if chr(code) not in _KEEP_CONTROLS and (code < 0x20 or code == 0x7F):
            table[code] = None
    return table


def _decode_escape(match: re.Match[str]) -> str:
    text = match.group(0)
    if text[0] == "%":
        # Bytes that are not UTF-8 are dropped, like format characters: they hide nothing.
        return bytes.fromhex(text.replace("%", "")).decode("utf-8", errors="ignore")
    if text[0] == "\\":
        code = int(text[2:], 16)
    elif text.startswith("&#"):
        code = int(text[3:-1], 16) if text[2] in "xX" else int(text[2:-1])
    else:
        return html.entities.html5.get(text[1:], text)
    return chr(code) if code <= sys.maxunicode else ""


def normalise(text: str) -> str:
    """The text as the scanner sees it (see the module docstring)."""
    if "%" in text or "\\" in text or "&" in text:
        text = _ESCAPE.sub(_decode_escape, text)
    if text.isascii():
        return _ASCII_INVISIBLE.sub("", text)
    return unicodedata.normalize("NFKC", text).translate(_table())


def _glued(text: str, start: int, end: int) -> bool:
    """Whether the run text[start:end] is part of an identifier: a letter (or a digit) right
    next to it, or a dash and then a letter (the digit groups of a UUID)."""
    before = text[start - 1] if start > 0 else ""
    if before.isalnum() or (before == "-" and start > 1 and text[start - 2].isalnum()):
        return True
    after = text[end] if end < len(text) else ""
    return after.isalnum() or (after == "-" and end + 1 < len(text) and text[end + 1].isalnum())


def _card_numbers(normal_text: str) -> Iterator[re.Match[str]]:
    """The card numbers in normalised text."""
    for match in _RUN.finditer(normal_text):
        digits = match.group(0).translate(_NO_SEPARATORS)
        if len(digits) <= 19 and luhn_ok(digits) and not _glued(normal_text, match.start(), match.end()):
            yield match


def holds_card_number(text: str) -> bool:
    """True if the text holds 13-19 digits, in any disguise, that pass Luhn."""
    return next(_card_numbers(normalise(text)), None) is not None


def _digitish_count_below(text: str, n: int) -> bool:
    """A cheap bound: every digit of a number, escaped or not, shows as an ASCII digit or a
    non-ASCII character, so text with fewer than n of those holds no number of n digits."""
    return text.isascii() and sum(map(text.count, "0123456789")) < n


def _card_spans(text: str) -> list[tuple[int, int]]:
    """Where the card numbers are in the original text: each escape or character is
    normalised on its own and remembers where it came from."""
    pieces: list[str] = []
    origin: list[tuple[int, int]] = []
    for unit in _UNIT.finditer(text):
        normal = normalise(unit.group(0))
        pieces.append(normal)
        origin += [unit.span()] * len(normal)
    normal_text = "".join(pieces)
    return [(origin[m.start()][0], origin[m.end() - 1][1]) for m in _card_numbers(normal_text)]


def redact_card_numbers(text: str, *, limit: int | None = None) -> str:
    """The text with each card number (in any disguise) replaced by MARKER, cut to `limit`
    characters if given: redacted before the cut, so that a number cut short does not stay
    behind missing only a check digit anyone can compute, and after it, so that a cut through
    a longer run of digits cannot make a new one."""
    if limit is not None:
        return redact_card_numbers(redact_card_numbers(text)[:limit])
    if _digitish_count_below(text, 13):
        return text
    if text in _clean:
        return text
    redacted = _redacted(text)
    if redacted is text and len(text) <= _CLEAN_CHARS:
        if len(_clean) >= _CLEAN_MAX:
            _clean.clear()
        _clean[text] = None
    return redacted


_CLEAN_CHARS = 256
_CLEAN_MAX = 4096
_clean: dict[str, None] = {}
"""Short texts known to hold no card number: the UUIDs, paths and addresses of every request's
log lines come back request after request. Only clean texts are remembered, never one that
held a card number (that would keep it in memory), and at most _CLEAN_MAX of them (then the
memory starts again): a flood of new texts costs the scan it would have cost anyway."""


def _redacted(text: str) -> str:
    if not holds_card_number(text):
        return text
    spans = _card_spans(text)
    if not spans:  # normalising piece by piece saw it differently: give nothing away
        return MARKER
    out: list[str] = []
    last = 0
    for start, end in spans:
        out += [text[last:start], MARKER]
        last = end
    out.append(text[last:])
    return "".join(out)


def _is_cvv_key(key: str) -> bool:
    key = normalise(key)
    squashed = re.sub(r"[^a-z0-9]", "", key.casefold())
    if squashed in _CVV_KEYS or any(phrase in squashed for phrase in _CVV_PHRASES):
        return True
    words = [w.lower() for w in _KEY_WORDS.findall(key)]
    # "cvv2" splits into "cvv" and "2": a word may take the digits after it
    following = [*words[1:], ""][: len(words)]
    return any(_CVV_WORDS.match(w + (n if n.isdigit() else "")) or _CVV_WORDS.match(w)
               for w, n in zip(words, following, strict=True))


def find_card_data(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """The location of the first card number or CVV field in a JSON value, or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_cvv_key(str(key)) or holds_card_number(str(key)):
                return (*path, str(key))
            found = find_card_data(item, (*path, str(key)))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_card_data(item, (*path, index))
            if found is not None:
                return found
    elif isinstance(value, str):
        return path if holds_card_number(value) else None
    elif isinstance(value, int) and not isinstance(value, bool):
        return path if holds_card_number(str(abs(value))) else None
    elif isinstance(value, float):
        return path if value.is_integer() and holds_card_number(str(int(abs(value)))) else None
    return None


# --- logging ---------------------------------------------------------------------------------


def _redact_value(value: Any) -> Any:
    return redact_card_numbers(value) if isinstance(value, str) else value


def redact_value(value: Any, *, depth: int = 0) -> Any:
    """`value` with card numbers removed from every string in it (dict keys and values, list
    and tuple items, nested up to 32 levels; deeper parts are replaced by MARKER)."""
    if isinstance(value, str):
        return redact_card_numbers(value)
    if depth >= 32:
        return MARKER
    if isinstance(value, dict):
        return {redact_value(k, depth=depth + 1): redact_value(v, depth=depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v, depth=depth + 1) for v in value]
    return value


def redact_record(record: logging.LogRecord) -> None:
    """Remove card numbers from a log record's message, arguments, traceback and stack."""
    if isinstance(record.msg, str):
        record.msg = redact_card_numbers(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redact_value(a) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: _redact_value(v) for k, v in record.args.items()}
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it, with the redacted parts
        message = ""
    if redact_card_numbers(message) != message:
        # Split across arguments, or inside a non-string argument: keep the redacted whole.
        record.msg, record.args = redact_card_numbers(message), ()
    if record.exc_info and record.exc_info[1] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        redacted = redact_card_numbers(text)
        if redacted != text:
            # Formatters append exc_text when it is set; no handler may format the original.
            record.exc_info, record.exc_text = None, redacted
    if record.stack_info:
        record.stack_info = redact_card_numbers(record.stack_info)


def install_log_redaction() -> None:
    """Make every log record this process creates go through `redact_record`.

    A record factory rather than a filter: filters sit on one logger or one handler, and the
    Functions worker, uvicorn and the Azure SDK each bring their own; every record, whoever
    logs it and wherever it goes, is made by the factory. Installing twice is a no-op.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "custos_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    factory.custos_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    _redact_extra_fields()


REDACTED_FIELDS = "_custos_redacted_fields"
"""The record attribute naming the `extra=` fields redacted when the record was made, with the
values as redacted (a field set or replaced later does not match and is scanned again)."""


def redacted_already(record: logging.LogRecord, key: str, value: Any) -> bool:
    """Whether `value` is what record field `key` held once redacted when the record was made."""
    done = record.__dict__.get(REDACTED_FIELDS) or {}
    # Only values nobody can change in place: a list or dict could have been added to since.
    return key in done and done[key] is value and isinstance(value, str | int | float | bool | None)


def _redact_extra_fields() -> None:
    """Redact the `extra=` fields too: `Logger.makeRecord` sets them after the factory has
    run, and structured logging puts request data there (Application Insights sends them
    as custom dimensions)."""
    make_record = logging.Logger.makeRecord
    if getattr(make_record, "custos_redacting", False):
        return

    def redacting_make_record(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(self, *args, **kwargs)
        extra = args[8] if len(args) > 8 else kwargs.get("extra")
        if extra:
            for key in extra:
                record.__dict__[key] = redact_value(record.__dict__[key])
            # Which fields hold a redacted value: a formatter need not scan them again.
            record.__dict__[REDACTED_FIELDS] = {key: record.__dict__[key] for key in extra}
        return record

    redacting_make_record.custos_redacting = True  # type: ignore[attr-defined]
    logging.Logger.makeRecord = redacting_make_record  # type: ignore[method-assign]
