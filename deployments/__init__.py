"""The one deployment of the one flow: its names and where its code lives.

It ships inside the installed package as ``hexlabs_tasks.deployments``. ``hexlabs_tasks._prefect`` registers it
through the Prefect API when the API or a worker starts (no work pool: hexlabs-tasks workers perform its runs);
``prefect.yaml`` beside this file declares the same deployment for ``prefect deploy``, for running the flow on a
stock Prefect worker instead.
"""

from __future__ import annotations

__all__ = ["DEPLOYMENT_NAME", "DESCRIPTION", "ENTRYPOINT", "FLOW_NAME", "TAG"]

FLOW_NAME = "hexlabs-perform-task"
DEPLOYMENT_NAME = "hexlabs-tasks"
TAG = "hexlabs-tasks"
# A module path, importable wherever hexlabs-tasks is installed: no source checkout or pull step is needed.
ENTRYPOINT = "hexlabs_tasks.flows.perform_task:perform_task"
DESCRIPTION = (
    "One flow run per hexlabs-tasks task: performs the task's HTTP request with retries. "
    "The only parameter is the task id; the request itself lives in the hexlabs-tasks database."
)
