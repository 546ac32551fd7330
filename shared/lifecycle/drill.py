"""The restore drill: back up, restore into scratch, verify there, measure RPO and RTO.

1. Back up: `pg_dump --format=custom` of the app database (the pg_dump of the running
   server's major version) and a copy of every blob container into `drill-<run>-<name>`.
2. Restore: a scratch database `custos_drill_<run>` on the same server, `pg_restore` into it.
3. Verify in the scratch copy, never the source: every tenant's audit chain (and the
   platform chain) against its newest signed checkpoint read from the *copied* checkpoint
   container, as the app role so row-level security applies as it does for the app; and every
   copied attachment re-hashed against its content address.
4. Measure: RPO = now minus the newest restored audit event; RTO = wall time from the start
   of the backup to the end of verification. Scratch database and containers are dropped at
   the end unless `keep`.

The database steps run as a role that may read every row and create databases (the
cluster's admin role locally: DATABASE_ADMIN_URL): the owner role cannot, since every tenant
table forces row-level security on its owner too. Its password reaches pg_dump and pg_restore
through the environment (PGPASSWORD), never the command line. docs/dr.md says how the same
drill runs in Azure with point-in-time restore.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.core import storage
from shared.core.errors import InvalidValue
from shared.lifecycle.errors import DrillFailed

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient, ContainerClient

_ATTACHMENT = re.compile(r"^tenants/([0-9a-f-]{36})/sha256/([0-9a-f]{64})$")
PG_TIMEOUT_S = 3600


@dataclass
class DrillReport:
    """What the drill measured and found."""

    run: str
    phases: list[tuple[str, float]] = field(default_factory=list)
    tenants_verified: int = 0
    events: int = 0
    blobs_copied: int = 0
    blobs_verified: int = 0
    failures: list[str] = field(default_factory=list)
    newest_event: datetime | None = None
    rpo_s: float | None = None
    rto_s: float = 0.0
    kept: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run, "ok": self.ok, "phases": [{"phase": n, "seconds": round(s, 3)} for n, s in self.phases],
            "tenants_verified": self.tenants_verified, "events": self.events, "blobs_copied": self.blobs_copied,
            "blobs_verified": self.blobs_verified, "failures": self.failures,
            "newest_event": self.newest_event.isoformat() if self.newest_event else None,
            "rpo_s": None if self.rpo_s is None else round(self.rpo_s, 3), "rto_s": round(self.rto_s, 3),
            "kept": self.kept,
        }

    def table(self) -> str:
        """The report as a plain-text table (what the CLI prints)."""
        rows = [(f"phase: {name}", f"{seconds:.2f} s") for name, seconds in self.phases]
        rows += [
            ("tenants verified (chains)", str(self.tenants_verified)),
            ("audit events verified", str(self.events)),
            ("blobs copied", str(self.blobs_copied)),
            ("attachments re-hashed", str(self.blobs_verified)),
            ("failures", str(len(self.failures))),
            ("newest restored event", self.newest_event.isoformat() if self.newest_event else "(none)"),
            ("RPO (now - newest restored event)", "n/a" if self.rpo_s is None else f"{self.rpo_s:.1f} s"),
            ("RTO (backup start - verified)", f"{self.rto_s:.1f} s"),
            ("result", "PASS" if self.ok else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"restore drill {self.run}", f"{'measure'.ljust(width)}  value", f"{'-' * width}  {'-' * 24}"]
        lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
        lines += [f"FAIL {line}" for line in self.failures]
        return "\n".join(lines)


def _pg_env(url: str) -> tuple[dict[str, str], str]:
    """libpq environment for `url` (password in PGPASSWORD) and its conninfo without the password."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    env = {**os.environ}
    if "password" in params:
        env["PGPASSWORD"] = params.pop("password")
    return env, make_conninfo(**params)


def _with_db(url: str, dbname: str) -> str:
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    return make_conninfo(**{**params, "dbname": dbname})


def find_pg_tool(name: str, major: int) -> Path:
    """The `pg_dump`/`pg_restore` of PostgreSQL `major` (as scripts/devservices.py finds initdb).

    Raises:
        DrillFailed: no such tool of that major version on this machine.
    """
    candidates = [Path(f"/usr/lib/postgresql/{major}/bin/{name}")]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if not os.access(path, os.X_OK):
            continue
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False).stdout  # noqa: S603  # nosec B603  # argument list, no shell; path is a PostgreSQL tool we located
        version = re.search(r"(\d+)(?:\.\d+)?", out)
        if version and int(version.group(1)) == major:
            return path
    raise DrillFailed(f"no {name} for PostgreSQL {major} on this machine")


def _run_tool(args: list[str], env: dict[str, str], what: str) -> None:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=PG_TIMEOUT_S, check=False)  # noqa: S603  # nosec B603  # argument list, no shell; args are built by this module
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        raise DrillFailed(f"{what} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")


def _copy_containers(service: BlobServiceClient, run: str, keep: Callable[[str], bool],
                     report: DrillReport) -> dict[str, ContainerClient]:
    from azure.storage.blob import ContentSettings

    copies: dict[str, ContainerClient] = {}
    for name in storage.CONTAINERS:
        source = service.get_container_client(name)
        target = service.get_container_client(f"drill-{run}-{name}")
        target.create_container()
        copies[name] = target
        if not source.exists():
            continue
        for item in source.list_blobs(include=["metadata"], results_per_page=500):
            if not keep(item.name):
                continue
            data = source.get_blob_client(item.name).download_blob()
            target.get_blob_client(item.name).upload_blob(
                data.chunks(), length=item.size, overwrite=False, metadata=item.metadata or None,
                content_settings=ContentSettings(content_type=item.content_settings.content_type),
            )
            report.blobs_copied += 1
    return copies


def _verify_chains(conn: psycopg.Connection[Any], tenants: list[str] | None, checkpoint_container: ContainerClient,
                   report: DrillReport) -> None:
    ids = [row["id"] for row in conn.execute(
        "select id::text as id from tenants where status <> 'PURGED' order by created_at").fetchall()]
    wanted = [audit.PLATFORM_CHAIN, *ids] if tenants is None else [t for t in [audit.PLATFORM_CHAIN, *ids]
                                                                  if t in tenants]
    for missing in sorted(set(tenants or []) - set(wanted)):
        report.failures.append(f"tenant {missing}: not in the restored database")
    for tid in wanted:
        newest = checkpoints.newest_signed(tid, container=checkpoint_container)
        for bad in newest.rejected:
            report.failures.append(f"chain {tid}: checkpoint {bad['name']} rejected: {bad['reason']}")
        with conn.transaction():
            conn.execute("select set_config('app.tenant_id', %s, true)", (tid,))
            result = audit.verify_segment(conn, tenant_id=tid, checkpoint=newest.ref)  # type: ignore[arg-type]
            newest_at = conn.execute("select max(occurred_at) as at from audit_events").fetchone()
        report.tenants_verified += 1
        report.events += result.events_checked
        if not result.valid:
            failure = result.first_failure or {}
            report.failures.append(f"chain {tid}: seq {failure.get('seq')} {failure.get('code')}: {failure.get('reason')}")
        at = newest_at["at"] if newest_at else None
        if at is not None and (report.newest_event is None or at > report.newest_event):
            report.newest_event = at


def _verify_attachments(container: ContainerClient, keep: Callable[[str], bool], report: DrillReport) -> None:
    for item in container.list_blobs(results_per_page=500):
        if not keep(item.name):
            continue
        match = _ATTACHMENT.match(item.name)
        if match is None:
            report.failures.append(f"attachment {item.name}: not a content address")
            continue
        digest = hashlib.sha256()
        for chunk in container.get_blob_client(item.name).download_blob().chunks():
            digest.update(chunk)
        report.blobs_verified += 1
        if digest.hexdigest() != match.group(2):
            report.failures.append(f"attachment {item.name}: content hashes to {digest.hexdigest()}, not its name")


@contextmanager
def _phase(report: DrillReport, name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        report.phases.append((name, time.perf_counter() - started))


def run_drill(
    *,
    admin_url: str,
    app_role: str,
    tenants: list[str] | None = None,
    keep: bool = False,
    now: Callable[[], datetime] | None = None,
    after_copy: Callable[[dict[str, ContainerClient]], None] | None = None,
) -> DrillReport:
    """Back up, restore into scratch, verify there, measure; see the module docstring.

    `tenants` limits verification (and the blob copy) to those tenants' chains and blobs; the
    whole database is dumped and restored regardless. `now` is the clock RPO is measured
    against. `after_copy` sees the scratch containers before verification (a test tampers there).

    Raises:
        InvalidValue: a tenant is not a UUID.
        DrillFailed: a backup or restore step failed (verification failures are in the report).
    """
    clock = now or (lambda: datetime.now(UTC))
    run = uuid.uuid4().hex[:10]
    report = DrillReport(run=run)
    scratch_db = f"custos_drill_{run}"
    try:
        wanted = None if tenants is None else [audit.normal_tenant_id(t) for t in tenants]
    except ValueError:
        raise InvalidValue("--tenant takes tenant ids (UUIDs)",
                           errors=[{"location": ["tenant"], "message": "not a UUID"}]) from None

    def in_scope(name: str) -> bool:
        return wanted is None or any(tid in name for tid in wanted)

    service = storage.blob_service()
    copies: dict[str, ContainerClient] = {}
    created_db = False
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="custos-drill-") as work:
            dump = Path(work) / "custos.dump"
            env, conninfo = _pg_env(admin_url)
            with _phase(report, "pg_dump"), psycopg.connect(admin_url, autocommit=True) as admin:
                major = int(str(admin.execute("show server_version_num").fetchone()[0])) // 10000  # type: ignore[index]
                _run_tool([str(find_pg_tool("pg_dump", major)), "--format=custom", "--no-password",
                           f"--file={dump}", f"--dbname={conninfo}"], env, "pg_dump")
            with _phase(report, "copy blob containers"):
                copies = _copy_containers(service, run, in_scope, report)
            with _phase(report, "restore database"), psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("create database {} template template0").format(sql.Identifier(scratch_db)))
                created_db = True
                _run_tool([str(find_pg_tool("pg_restore", major)), "--exit-on-error", "--no-password",
                           f"--dbname={_pg_env(_with_db(admin_url, scratch_db))[1]}", str(dump)],
                          env, "pg_restore")
        if after_copy is not None:
            after_copy(copies)
        with _phase(report, "verify audit chains"), psycopg.connect(
                _with_db(admin_url, scratch_db), autocommit=True, row_factory=dict_row) as conn:
            # As the app role, so row-level security shows each tenant only its own rows.
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(app_role)))
            _verify_chains(conn, wanted, copies["audit-checkpoints"], report)
        with _phase(report, "verify attachments"):
            _verify_attachments(copies["attachments"], in_scope, report)
        report.rto_s = time.perf_counter() - started
        if report.newest_event is not None:
            report.rpo_s = max(0.0, (clock() - report.newest_event).total_seconds())
    finally:
        with _phase(report, "clean up" if not keep else "keep scratch copies"):
            if keep:
                report.kept = {"database": scratch_db, "containers": [c.container_name for c in copies.values()]}
            else:
                _clean_up(admin_url, scratch_db if created_db else None, copies)
    return report


def _clean_up(admin_url: str, scratch_db: str | None, copies: dict[str, ContainerClient]) -> None:
    for container in copies.values():
        container.delete_container()
    if scratch_db is not None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(scratch_db)))
