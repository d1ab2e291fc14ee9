"""The stock Prefect equivalent of one hexlabs task: a flow with one task making one httpx request, with retries.

``python -m bench.systems.stock_flow serve NAME`` serves it with ``flow.serve()`` (Prefect's defaults: a
subprocess per run, at most 5 at once, polling every 10 s).
"""

from __future__ import annotations

import sys

import httpx
from prefect import flow, task

_client: httpx.Client | None = None


def _http() -> httpx.Client:
    # one client per process (a new client per request costs ~30 ms of CPU); the runner starts a process per run
    global _client
    if _client is None:
        _client = httpx.Client(timeout=30)
    return _client


@task(retries=20, retry_delay_seconds=0.5)
def call(url: str) -> int:
    response = _http().post(url, json={"p": url})
    response.raise_for_status()
    return response.status_code


@flow(name="bench-request")
def bench_request(url: str) -> int:
    return call(url)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        bench_request.serve(name=sys.argv[2] if len(sys.argv) > 2 else "serve", print_starting_message=True)
