"""The Celery equivalent of one hexlabs task: one httpx request, retried on failure (0.5 s apart, up to 20 times).

Broker: Redis (``BENCH_CELERY_BROKER``, default redis://127.0.0.1:6379/0), a queue of its own per run
(``BENCH_CELERY_QUEUE``); no result backend (the target counts the requests).
"""

from __future__ import annotations

import os

import httpx
from celery import Celery

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench")
app = Celery("bench", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Redis re-delivers unacked messages after visibility_timeout; far above any ETA used here
    broker_transport_options={"visibility_timeout": 4 * 3600},
)
_client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=100, max_keepalive_connections=100))


@app.task(bind=True, max_retries=20, default_retry_delay=0.5, acks_late=False)  # type: ignore[untyped-decorator]
def call(self, url: str) -> int:  # type: ignore[no-untyped-def]
    try:
        response = _client.post(url, json={"p": url})
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise self.retry(exc=exc, countdown=0.5) from exc
    return response.status_code
