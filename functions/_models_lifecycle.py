"""Response models of jobs and tenant exports."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared.web.models import Out


class Progress(Out):
    done: int = Field(description="Items done")
    total: int | None = Field(description="Items in all, once known")


class JobError(Out):
    type: str = Field(description="Problem type (urn:custos:problem:...)")
    detail: str | None = Field(description="A safe detail; never a stack trace")


class Job(Out):
    id: str
    kind: str = Field(description="What the job does, e.g. export")
    state: str = Field(description="QUEUED, RUNNING, DONE or FAILED")
    progress: Progress
    error: JobError | None
    attempts: int
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ExportFile(Out):
    path: str = Field(description="Path inside the export, e.g. tables/records.jsonl")
    sha256: str
    bytes: int
    url: str = Field(description="Short-lived download link (relative to the API locally, a SAS URL in Azure)")
    expires_at: datetime


class Export(Job):
    tables: dict[str, int] | None = Field(description="Rows per table, once DONE")
    files: list[ExportFile] | None = Field(description="Every file with its link, once DONE (manifest.json first to check)")


class Exports(Out):
    exports: list[Export] = Field(description="Newest first; `files` is null here (open one export for its links)")
