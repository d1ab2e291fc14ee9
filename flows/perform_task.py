"""The one flow: perform one task to the end, every attempt, as a stock Prefect worker would run it.

``hexlabs-tasks worker`` does not run this flow per task: it performs due tasks itself, many at once, and records
the same states and attempt log lines on each task's flow run through the Prefect API (see docs/prefect.md for
why). This flow is the same work for a stock Prefect worker: claim the task in the database, perform its
attempts, sleep between retries (holding the worker's slot, as Prefect task retries do), and end Completed,
Failed or Cancelled to match the task. Both paths claim through the database, so they never perform one attempt
twice even if both run.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Failed

from hexlabs_tasks.deployments import FLOW_NAME


@flow(name=FLOW_NAME, description="Perform one hexlabs-tasks task: its HTTP request, with retries.")
async def perform_task(task_id: str) -> State:
    """Perform every attempt of the task ``task_id`` until it is completed, failed or cancelled."""
    from hexlabs_tasks._flow_runner import run_task_to_end

    logger = get_run_logger()
    outcome = await run_task_to_end(task_id, log=logger.info)
    if outcome.status == "completed":
        return Completed(message=outcome.message)
    if outcome.status == "cancelled":
        return Cancelled(message=outcome.message)
    return Failed(message=outcome.message)


if __name__ == "__main__":
    import sys

    asyncio.run(perform_task(sys.argv[1]))
