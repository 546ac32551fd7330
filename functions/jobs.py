"""Jobs: the queue trigger that runs them and the view of one job."""

from __future__ import annotations

from typing import Any

import azure.functions as func

from functions._models_lifecycle import Job
from shared.lifecycle import api
from shared.web.endpoint import RequestContext, endpoint

bp = func.Blueprint()


@bp.queue_trigger(arg_name="msg", queue_name="%JOBS_QUEUE%", connection="JobsStorage")
def run_job(msg: func.QueueMessage) -> None:
    """Run the job a message names (the message holds only its ids); an unexpected failure
    raises, so the host retries it and, after maxDequeueCount tries, moves it to the poison queue."""
    api.run_job_message(msg.get_body().decode("utf-8", errors="replace"))


@bp.route(route="api/jobs/{id}", methods=["GET"])
@endpoint(response=Job, permission="jobs.read", tags=("jobs",))
def get_job(ctx: RequestContext) -> dict[str, Any]:
    """A job's state, progress (done / total) and error."""
    return api.get_job(ctx, ctx.uuid_param("id"))
