"""Opaque keyset cursors for list endpoints."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from shared.core.errors import InvalidCursor

Part = Literal["text", "uuid", "timestamp"]
_PARSERS: dict[str, Callable[[str], str]] = {"text": str, "uuid": lambda v: str(uuid.UUID(v)), "timestamp": lambda v: datetime.fromisoformat(v).isoformat()}


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values), default=str).encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, parts: tuple[Part, ...]) -> list[str] | None:
    """The values of a cursor made by `encode_cursor`, each checked to be of its part's kind;
    None for the first page.

    Raises:
        InvalidCursor: the cursor was not made by us (or was edited).
    """
    if not cursor:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(parts) or not all(isinstance(v, str) for v in values):
            raise ValueError("shape")
        return [_PARSERS[kind](value) for kind, value in zip(parts, values, strict=True)]
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor(
            "the cursor is not valid", errors=[{"location": ["query", "after"], "message": "not a cursor from this API"}]
        ) from None
