"""Content-addressed attachments in Blob storage.

A file is stored at `attachments/tenants/<tenant_id>/sha256/<hex>`, written with
`overwrite=False`: identical content is stored once per tenant and never shared across
tenants. The hash is computed over the body in chunks before the upload (the Functions
Python worker hands the whole request body over in memory, so there is no earlier point to
hash it), and again on every read: content whose hash no longer matches is not served and
an integrity event goes to the tenant's audit trail.

Text attachments (and every file name) are scanned for card numbers before anything is
hashed or stored: a text file is as much a way in for card data as a JSON body.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from shared.audit import chain as audit
from shared.core import db, storage
from shared.core.errors import (
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.core.settings import get_settings
from shared.records.errors import IntegrityFailure
from shared.web.card_data import holds_card_number
from shared.web.errors import CardDataRefused

CONTAINER = "attachments"
CHUNK = 1 << 20
_FILENAME = re.compile(r"""filename\*?=(?:UTF-8'')?"?([^";]+)"?""", re.IGNORECASE)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([A-Za-z0-9._:-]{1,40})", re.IGNORECASE)
# Media types whose content is text even though they are not text/*.
TEXT_MEDIA = frozenset({"application/json", "application/csv", "application/xml", "application/x-ndjson",
                        "application/yaml", "application/x-yaml", "application/javascript", "application/sql",
                        "application/x-www-form-urlencoded", "application/rtf", "application/ld+json"})
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def blob_name(tenant_id: str, sha256: str) -> str:
    return f"tenants/{tenant_id}/sha256/{sha256}"


def sha256_of(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _chunks(data: bytes) -> Iterable[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        yield bytes(view[start:start + CHUNK])


def filename_from(content_disposition: str | None) -> str:
    """The filename of a Content-Disposition header, made safe to show; 'attachment' if none."""
    from urllib.parse import unquote

    match = _FILENAME.search(content_disposition or "")
    name = unquote(match.group(1)) if match else "attachment"
    name = re.sub(r"[\x00-\x1f\x7f/\\]", "_", name).strip(" .")[:200]
    return name or "attachment"


def is_text(media: str) -> bool:
    """Whether a media type carries text that a person (or a card number) could be written in."""
    return media.startswith("text/") or media in TEXT_MEDIA or media.endswith(("+json", "+xml"))


def _decodings(data: bytes, content_type: str) -> list[str]:
    """The body as text in every way a reader might decode it: UTF-8 (where UTF-16 and UTF-32
    text still shows its ASCII digits, between NULs the scanner removes), the declared
    charset, and the encoding a byte-order mark names."""
    encodings = []
    declared = _CHARSET.search(content_type)
    if declared:
        encodings.append(declared.group(1))
    encodings += [name for bom, name in _BOMS if data.startswith(bom)][:1]
    texts = [data.decode("utf-8", errors="replace")]
    for name in encodings:
        try:
            if codecs.lookup(name).name != "utf-8":
                texts.append(data.decode(name, errors="replace"))
        except (LookupError, ValueError):
            continue  # not a text encoding: the UTF-8 reading above still counts
    return texts


def refuse_card_data(data: bytes, *, media: str, content_type: str, filename: str) -> None:
    """Refuse a file whose name, or whose text, holds a card number.

    Raises:
        CardDataRefused: naming the file name or the body, never the number.
    """
    if holds_card_number(filename):
        raise CardDataRefused(location=["header", "Content-Disposition", "filename"])
    if is_text(media) and any(holds_card_number(text) for text in _decodings(data, content_type)):
        raise CardDataRefused(location=["body"])


@dataclass(frozen=True)
class Stored:
    sha256: str
    size: int
    content_type: str
    filename: str
    deduplicated: bool

    def as_dict(self) -> dict[str, object]:
        return {"sha256": self.sha256, "size": self.size, "content_type": self.content_type, "filename": self.filename}


def store(tenant_id: str, data: bytes, *, content_type: str, filename: str) -> Stored:
    """Hash and store a file for a tenant.

    Raises:
        PayloadTooLarge, UnsupportedMediaType, ValidationFailed (empty file),
        CardDataRefused (a card number in the file name or a text file's content).
    """
    settings = get_settings()
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in settings.attachment_types:
        raise UnsupportedMediaType(f"attachments may be {', '.join(sorted(settings.attachment_types))}")
    if len(data) > settings.attachment_max_bytes:
        raise PayloadTooLarge(f"an attachment may be at most {settings.attachment_max_bytes} bytes")
    if not data:
        raise ValidationFailed("the file is empty", errors=[{"location": ["body"], "message": "empty file"}])
    refuse_card_data(data, media=media, content_type=content_type, filename=filename)
    sha256, size = sha256_of(_chunks(data))
    blob = storage.blob_service().get_blob_client(CONTAINER, blob_name(tenant_id, sha256))
    from azure.core.exceptions import ResourceExistsError  # loaded with the client, not at import

    try:
        blob.upload_blob(data, overwrite=False, content_type=media, metadata={"sha256": sha256}, max_concurrency=2)
        deduplicated = False
    except ResourceExistsError:
        deduplicated = True  # same content, same name: stored once per tenant
    return Stored(sha256=sha256, size=size, content_type=media, filename=filename, deduplicated=deduplicated)


def read_verified(tenant_id: str, sha256: str, *, record_id: str, meta: audit.RequestMeta, actor: audit.Actor) -> bytes:
    """The content, re-hashed while it streams from storage.

    Raises:
        NotFound: no such blob (or a malformed hash).
        IntegrityFailure: the content no longer matches its name; recorded as an integrity event.
    """
    if not _SHA256.match(sha256):
        raise NotFound("no such attachment")
    blob = storage.blob_service().get_blob_client(CONTAINER, blob_name(tenant_id, sha256))
    from azure.core.exceptions import ResourceNotFoundError

    try:
        downloader = blob.download_blob()
    except ResourceNotFoundError:
        raise NotFound("no such attachment") from None
    digest, parts = hashlib.sha256(), []
    for chunk in downloader.chunks():
        digest.update(chunk)
        parts.append(chunk)
    if digest.hexdigest() != sha256:
        with db.tenant_tx(tenant_id) as conn:
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="integrity.attachment_mismatch",
                         target_type="record", target_id=record_id,
                         after={"expected_sha256": sha256, "actual_sha256": digest.hexdigest()}, meta=meta)
        raise IntegrityFailure("the stored file does not match its recorded hash; it is not served")
    return b"".join(parts)
