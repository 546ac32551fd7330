"""Card data never enters Custos: requests holding a card number or a CVV are refused.

PCI DSS scope stays with the payment gateway: Custos keeps only a gateway token, brand,
last four digits and expiry. The endpoint wrapper runs `find_card_data` over every JSON
body and query string before anything is parsed further, stored or logged; the refusal
names the location but never the value.
"""

from __future__ import annotations

import re
from typing import Any

# A whole run of digits, single spaces or dashes between them, that is not glued to letters or
# digits (directly or through a dash): "4111 1111 1111 1111" is a candidate, the digit groups
# of a UUID ("…-9012-3456…", next to hex letters) are not. The run is taken whole (possessive,
# no backtracking into shorter windows) and must hold 13-19 digits in all.
_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z])(?<![0-9A-Za-z]-)[0-9](?:[0-9]|[ -](?=[0-9]))*+(?![0-9A-Za-z])(?!-[0-9A-Za-z])"
)
_CVV_KEYS = frozenset({"cvv", "cvc", "cvv2", "cvc2", "cid", "csc", "cav2", "securitycode", "cardsecuritycode",
                       "cardverificationvalue", "cardverificationcode", "cardcvv", "cardcvc"})


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def holds_card_number(text: str) -> bool:
    """True if the text holds 13-19 digits (spaces or dashes allowed) that pass Luhn."""
    for match in _CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            return True
    return False


def _is_cvv_key(key: str) -> bool:
    return re.sub(r"[^a-z0-9]", "", key.lower()) in _CVV_KEYS


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
