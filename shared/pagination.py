"""Opaque keyset cursors for list endpoints."""

from __future__ import annotations

import base64
import json
from typing import Any

from shared.errors import ValidationFailed


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values), default=str).encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, arity: int) -> list[Any] | None:
    """The values of a cursor made by `encode_cursor`, or None for the first page.

    Raises:
        ValidationFailed: the cursor was not made by us (or was edited).
    """
    if not cursor:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        values = None
    if not isinstance(values, list) or len(values) != arity or not all(isinstance(v, str) for v in values):
        raise ValidationFailed(
            "the cursor is not valid", errors=[{"location": ["query", "after"], "message": "not a cursor from this API"}]
        )
    return values
