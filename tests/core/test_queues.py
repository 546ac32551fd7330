"""The queue client against real Azurite: base64 as the Functions host reads it, poison queue made."""

from __future__ import annotations

import base64
import os
import uuid

from azure.storage.queue import QueueClient

from devhost.queues import decode_body
from shared.core import queues


def _raw(name: str) -> QueueClient:
    return QueueClient.from_connection_string(os.environ["STORAGE_CONNECTION_STRING"], name)


def test_a_sent_message_is_base64_text_that_the_host_decodes_back() -> None:
    name = f"q-{uuid.uuid4().hex[:16]}"
    text = '{"job_id":"1","tenant_id":"2","note":"ünïcode"}'
    queues.send(name, text)
    stored = list(_raw(name).receive_messages(max_messages=5))
    assert len(stored) == 1
    assert stored[0].content == base64.b64encode(text.encode()).decode()  # what sits in the queue
    assert decode_body(stored[0].content, "base64").decode() == text  # what a queue trigger is given


def test_the_poison_queue_is_created_with_the_queue() -> None:
    name = f"q-{uuid.uuid4().hex[:16]}"
    queues.queue(name)
    assert _raw(name + queues.POISON_SUFFIX).get_queue_properties() is not None


def test_a_delayed_message_is_not_visible_yet() -> None:
    name = f"q-{uuid.uuid4().hex[:16]}"
    queues.send(name, "later", delay_s=3600)
    assert list(_raw(name).receive_messages(max_messages=5)) == []
    assert _raw(name).get_queue_properties().approximate_message_count == 1
