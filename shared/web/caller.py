"""Who acts in a domain call, and where its transaction comes from: the one transaction rule.

A trigger makes one call into a package's `api` module, passing its `RequestContext`, which
is a `Caller`. Each such entry point opens its own transaction with `caller.tenant_tx()` (or
`db.platform_tx()` for platform data), does its work and appends its audit events inside it,
so a change and its event commit together or not at all. Triggers write no SQL and no
audit events. Code outside HTTP (the ops CLI, timers, tests) acts through `Acting`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from shared.audit.chain import Actor, RequestMeta
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Unauthenticated
from shared.identity.guards import Principal


class Caller(Protocol):
    """The caller of a domain entry point."""

    @property
    def user(self) -> Principal:
        """The authenticated principal (raises Unauthenticated where there is none)."""
        ...

    @property
    def tenant_id(self) -> str:
        """The caller's tenant (raises Unauthenticated for tenantless callers)."""
        ...

    @property
    def actor(self) -> Actor:
        """Who acted, as the audit trail records it."""
        ...

    @property
    def meta(self) -> RequestMeta:
        """IP, user agent, session and request id for the audit trail."""
        ...

    def tenant_tx(self) -> AbstractContextManager[Conn]:
        """A top-level transaction in the caller's tenant (row-level security admits only it)."""
        ...


@dataclass(frozen=True)
class Acting:
    """A caller outside HTTP: the ops CLI, a timer acting for a user, a test."""

    user: Principal
    actor: Actor
    meta: RequestMeta = field(default_factory=RequestMeta)

    @property
    def tenant_id(self) -> str:
        if self.user.tenant_id is None:
            raise Unauthenticated("a tenant user is required")
        return self.user.tenant_id

    def tenant_tx(self) -> AbstractContextManager[Conn]:
        return db.tenant_tx(self.tenant_id)
