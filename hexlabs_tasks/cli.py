"""The ``hexlabs-tasks`` command: a thin layer over the SDK and the runners.

Task commands print the task as JSON on stdout. Errors print the contract's error JSON on stderr and exit 1;
usage errors exit 2.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hexlabs_tasks import __version__
from hexlabs_tasks._client import Tasks
from hexlabs_tasks._events import TaskEvent
from hexlabs_tasks._exceptions import HexlabsTasksError
from hexlabs_tasks._models import Task, TaskStatus, to_unix_ms

__all__ = ["main", "parse_duration"]

F = TypeVar("F", bound=Callable[..., Any])
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``, ``250ms`` as a timedelta.

    Raises:
        ValueError: the text is not such a duration.
    """
    text = text.strip().replace(" ", "")
    if not text or _DURATION.sub("", text):
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 2h, 1d or 1h30m")
    return timedelta(seconds=sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text)))


def _when(at: str | None, in_: str | None) -> int | None:
    if at and in_:
        raise click.UsageError("give --at or --in, not both")
    if in_:
        try:
            return to_unix_ms(datetime.now(UTC) + parse_duration(in_))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--in") from exc
    if at:
        try:
            moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError as exc:
            raise click.BadParameter(f"{at!r} is not an ISO 8601 time", param_hint="--at") from exc
        return to_unix_ms(moment if moment.tzinfo else moment.astimezone())  # naive: the local time zone
    return None


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not K:V", param_hint="--header")
        headers[name.strip()] = content.strip()
    return headers


def _params(values: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for value in values:
        name, sep, content = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not K=V", param_hint="--param")
        params[name] = content
    return params


def _body(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc}); quote a plain string as '\"text\"'", param_hint="--body") from exc


def _print_task(task: Task) -> None:
    click.echo(json.dumps(task.to_wire(), indent=2))


def _errors(fn: F) -> F:
    """Print HexlabsTasksError as the contract's error JSON on stderr and exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HexlabsTasksError as exc:
            click.echo(json.dumps(exc.to_dict()), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _client(ctx: click.Context) -> Tasks:
    client: Tasks = ctx.obj["client"]
    return client


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hexlabs-tasks")
@click.option(
    "--api-url",
    "url",
    envvar="HEXLABS_TASKS_URL",
    default=None,
    help="The API (default http://127.0.0.1:8000).",
)
@click.option("--token", envvar="HEXLABS_TASKS_TOKEN", default=None, help="Bearer token for the API.")
@click.pass_context
def main(ctx: click.Context, url: str | None, token: str | None) -> None:
    """Scheduled HTTP requests with retries, one Prefect flow run per task."""
    ctx.ensure_object(dict)
    ctx.obj["client"] = Tasks(base_url=url, token=token)
    ctx.call_on_close(ctx.obj["client"].close)


def _runner(fn: Callable[..., None]) -> Callable[..., None]:
    @wraps(fn)
    def wrapper(**overrides: Any) -> None:
        from hexlabs_tasks._serve import StartupError
        from hexlabs_tasks._settings import Settings

        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        try:
            fn(settings)
        except StartupError as exc:
            click.echo(f"hexlabs-tasks: {exc}", err=True)
            sys.exit(1)

    return wrapper


@main.command()
@click.option("--host", default=None, help="Address for the API (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port for the API (default 8000).")
@click.option("--prefect-port", type=int, default=None, help="Port for the local Prefect server (default 4200).")
@_runner
def serve(settings: Any) -> None:
    """Everything on one machine: the API, a worker and a local Prefect server."""
    from hexlabs_tasks._serve import run_serve

    run_serve(settings)


@main.command()
@click.option("--host", default=None, help="Address for the API (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port for the API (default 8000).")
@_runner
def api(settings: Any) -> None:
    """The API alone (Prefect at PREFECT_API_URL)."""
    from hexlabs_tasks._serve import run_api

    run_api(settings)


@main.command()
@_runner
def worker(settings: Any) -> None:
    """A worker alone (Prefect at PREFECT_API_URL)."""
    from hexlabs_tasks._serve import run_worker

    run_worker(settings)


@main.command()
@click.option("--url", "target", required=True, help="The URL to call.")
@click.option("--method", required=True, help="get, post, put, delete, patch, head or options.")
@click.option("--body", default=None, help="The body, as JSON.")
@click.option("--header", "headers", multiple=True, help="A header, K:V (repeatable).")
@click.option("--param", "params", multiple=True, help="A query parameter, K=V (repeatable).")
@click.option("--at", default=None, help="When, ISO 8601 (a time without offset is local time).")
@click.option("--in", "in_", default=None, help="When, from now: 30s, 10m, 2h, 1d, 1h30m.")
@click.option("--retries", type=int, default=None, help="Extra attempts after the first (default 3).")
@click.option("--timeout", type=float, default=None, help="Seconds for one attempt (default 30).")
@click.option("--idempotency-key", default=None, help="Make the create safe to repeat.")
@click.option("--after", "after", multiple=True, help="Run only after this task completed (repeatable).")
@click.pass_context
@_errors
def create(
    ctx: click.Context,
    target: str,
    method: str,
    body: str | None,
    headers: tuple[str, ...],
    params: tuple[str, ...],
    at: str | None,
    in_: str | None,
    retries: int | None,
    timeout: float | None,
    idempotency_key: str | None,
    after: tuple[str, ...],
) -> None:
    """Create a task and print it (due now unless --at or --in)."""
    request: dict[str, Any] = {
        "url": target,
        "method": method,
        "headers": _headers(headers),
        "params": _params(params),
    }
    if body is not None:
        request["body"] = _body(body)
    if timeout is not None:
        request["timeout"] = timeout
    when = _when(at, in_)
    task: dict[str, Any] = {
        "request": request,
        "performAt": when if when is not None else to_unix_ms(datetime.now(UTC)),
    }
    if retries is not None:
        task["retries"] = retries
    if after:
        task["dependsOn"] = list(after)
    _print_task(_client(ctx).create(task, idempotency_key=idempotency_key))


@main.command()
@click.argument("task_id")
@click.pass_context
@_errors
def read(ctx: click.Context, task_id: str) -> None:
    """Print a task."""
    _print_task(_client(ctx).read(task_id))


@main.command(name="list")
@click.option("--status", type=click.Choice([s.value for s in TaskStatus]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100)
@click.option("--cursor", default=None, help="nextCursor of the previous page.")
@click.pass_context
@_errors
def list_(ctx: click.Context, status: str | None, limit: int, cursor: str | None) -> None:
    """Print a page of tasks, oldest performAt first."""
    page = _client(ctx).list(status=status, limit=limit, cursor=cursor)
    click.echo(json.dumps({"data": [t.to_wire() for t in page.data], "nextCursor": page.next_cursor}, indent=2))


@main.command()
@click.argument("task_id")
@click.option("--url", "target", default=None, help="A new URL.")
@click.option("--method", default=None, help="A new method.")
@click.option("--body", default=None, help="A new body, as JSON.")
@click.option("--header", "headers", multiple=True, help="Replace the headers with these, K:V (repeatable).")
@click.option("--at", default=None, help="A new time, ISO 8601.")
@click.option("--in", "in_", default=None, help="A new time, from now: 30s, 10m, 2h.")
@click.option("--retries", type=int, default=None)
@click.option("--requeue", is_flag=True, help="Queue a failed, completed or cancelled task again.")
@click.pass_context
@_errors
def update(
    ctx: click.Context,
    task_id: str,
    target: str | None,
    method: str | None,
    body: str | None,
    headers: tuple[str, ...],
    at: str | None,
    in_: str | None,
    retries: int | None,
    requeue: bool,
) -> None:
    """Change a pending task (or --requeue a finished one) and print it."""
    client = _client(ctx)
    changes: dict[str, Any] = {}
    if target or method or body is not None or headers:
        request = client.read(task_id).request.to_wire()  # the request is replaced whole; start from the current
        request.update({k: v for k, v in (("url", target), ("method", method)) if v})
        if body is not None:
            request["body"] = _body(body)
        if headers:
            request["headers"] = _headers(headers)
        changes["request"] = request
    when = _when(at, in_)
    if when is not None:
        changes["performAt"] = when
    if retries is not None:
        changes["retries"] = retries
    if requeue:
        changes["status"] = "pending"
    if not changes:
        raise click.UsageError(
            "nothing to change: give --at, --in, --retries, --url, --method, --body, --header or --requeue"
        )
    _print_task(client.update(task_id, changes))


@main.command()
@click.argument("task_id")
@click.pass_context
@_errors
def delete(ctx: click.Context, task_id: str) -> None:
    """Delete a task (a pending one's request is never sent)."""
    _client(ctx).delete(task_id)
    click.echo(json.dumps({"id": task_id, "deleted": True}))


@main.command()
@click.argument("task_id")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@click.pass_context
@_errors
def wait(ctx: click.Context, task_id: str, timeout: float) -> None:
    """Wait until a task is completed, failed or cancelled, and print it (as the SDK's wait: check its status).

    Exits 1 if it is not final within --timeout.
    """
    _print_task(_client(ctx).wait(task_id, timeout=timeout))


# -- watch ---------------------------------------------------------------------------------------------------------

_STATUS_STYLES = {
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


@dataclass(slots=True)
class WatchRow:
    """One line of ``hexlabs-tasks watch``: a task as its latest event (or the listing) shows it."""

    id: str
    status: str
    attempts: int = 0
    last_event: str = ""
    at: int | None = None  # Unix ms of the last event (of the last update, for a listed task)


def watch_row(task: Task) -> WatchRow:
    """The row of a task as read or listed."""
    return WatchRow(task.id, task.status.value, task.attempts, "", task.updated_at)


def apply_event(rows: dict[str, WatchRow], event: TaskEvent) -> None:
    """Bring ``rows`` up to date with one event (a deleted task leaves the table)."""
    if event.task_id is None:
        return
    if event.type == "deleted":
        rows.pop(event.task_id, None)
        return
    row = rows.get(event.task_id)
    if row is None:
        row = rows[event.task_id] = WatchRow(event.task_id, "")
    data = event.data or {}
    attempt = data.get("attempt")
    if isinstance(attempt, int):
        row.attempts = attempt
    elif event.type == "created" or (event.type == "updated" and row.status in ("completed", "failed", "cancelled")):
        row.attempts = 0  # created, or queued again: attempts count from zero
    if event.status is not None:
        row.status = event.status.value
    row.last_event = _describe(event)
    row.at = event.at


def _describe(event: TaskEvent) -> str:
    data = event.data or {}
    if event.type == "running":
        return f"running (attempt {data.get('attempt', '?')})"
    if event.type == "attempt_finished":
        outcome = f"HTTP {data['httpStatus']}" if data.get("httpStatus") is not None else data.get("error") or "error"
        return f"attempt {data.get('attempt', '?')} finished: {outcome}"
    if event.type == "failed" and data.get("error"):
        return f"failed: {data['error']}"
    return event.type


def _time(at_ms: int | None, today: date) -> str:
    if at_ms is None:
        return ""
    moment = datetime.fromtimestamp(at_ms / 1000).astimezone()
    return moment.strftime("%H:%M:%S") if moment.date() == today else moment.strftime("%Y-%m-%d %H:%M")


def render_table(
    rows: Iterable[WatchRow],
    *,
    statuses: Iterable[str] = (),
    limit: int | None = None,
    today: date | None = None,
) -> Table:
    """The table ``hexlabs-tasks watch`` shows: the most recently changed task first.

    Args:
        rows: the tasks.
        statuses: show only tasks with one of these statuses (all when empty).
        limit: show at most this many (the caption says how many there are).
        today: times on this day show as HH:MM:SS, others with their date (default: the local today).
    """
    wanted = set(statuses)
    shown = sorted(
        (row for row in rows if not wanted or row.status in wanted),
        key=lambda row: (row.at or 0, row.id),
        reverse=True,
    )
    total = len(shown)
    if limit is not None:
        shown = shown[: max(limit, 0)]
    day = today or date.today()
    table = Table(title="hexlabs-tasks", title_justify="left", expand=False)
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("last event")
    table.add_column("time", no_wrap=True)
    for row in shown:
        table.add_row(
            row.id,
            Text(row.status, style=_STATUS_STYLES.get(row.status, "")),
            str(row.attempts),
            row.last_event,
            _time(row.at, day),
        )
    count = f"{total} task{'s' if total != 1 else ''}"
    table.caption = (f"showing {len(shown)} of {count}" if len(shown) < total else count) + " · Ctrl-C to stop"
    return table


class _Board:
    """What the live display renders: the current rows, drawn anew at each refresh."""

    def __init__(self, rows: dict[str, WatchRow], statuses: tuple[str, ...], console: Console) -> None:
        self.rows = rows
        self.statuses = statuses
        self.console = console

    def __rich__(self) -> Table:
        return render_table(self.rows.values(), statuses=self.statuses, limit=max(self.console.height - 7, 5))


def _baseline(client: Tasks, task_id: str | None, statuses: tuple[str, ...]) -> dict[str, WatchRow]:
    if task_id is not None:
        tasks = [client.read(task_id)]
    elif statuses:
        tasks = [task for status in statuses for task in client.list(status=status, limit=100).data]
    else:
        tasks = client.list(limit=100).data
    return {task.id: watch_row(task) for task in tasks}


@main.command()
@click.option("--task", "task_id", default=None, help="Only this task.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in TaskStatus]),
    help="Only tasks with this status (repeatable).",
)
@click.pass_context
@_errors
def watch(ctx: click.Context, task_id: str | None, statuses: tuple[str, ...]) -> None:
    """A live table of tasks and their statuses, updated as events arrive. Ctrl-C stops it."""
    from rich.live import Live

    client = _client(ctx)
    console = Console()
    stream: Generator[TaskEvent, None, None] | None = None
    try:
        rows = _baseline(client, task_id, statuses)
        # From the oldest event the server keeps: events between the listing above and the stream's start are
        # not missed, and replaying older ones ends at the state the listing shows.
        stream = client.watch(task_id=task_id, last_event_id=0)
        first = True
        with Live(_Board(rows, statuses, console), console=console, refresh_per_second=4):
            for event in stream:
                if event.is_gap:
                    if not first:  # events were lost: start again from a fresh listing
                        rows.clear()
                        rows.update(_baseline(client, task_id, statuses))
                else:
                    apply_event(rows, event)
                first = False
    except KeyboardInterrupt:
        pass
    finally:
        if stream is not None:
            stream.close()
