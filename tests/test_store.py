"""The task store on a real database: SQLite (a file per test) and PostgreSQL when 127.0.0.1:5432 answers.

Every store test runs once per backend. SQLite tests get a copy of a file migrated once per module; PostgreSQL
tests share one ``hexlabs_test_<hex>`` database per module, migrated once and emptied before each test, and
dropped at the end. Times are fixed Unix milliseconds, so nothing depends on the clock.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from support.databases import (
    create_postgres_database,
    drop_postgres_database,
    empty_postgres_tables,
    postgres_url,
    postgres_user,
    run_in_thread,
)

from hexlabs_tasks._exceptions import TaskValidationError
from hexlabs_tasks._executor import outcome_values
from hexlabs_tasks._migrate import alembic_config, upgrade
from hexlabs_tasks._retry import Decision, Verdict
from hexlabs_tasks._store import (
    CONFLICT_ATTEMPTS,
    Finish,
    Store,
    decode_cursor,
    encode_cursor,
    normalize_database_url,
)
from hexlabs_tasks._tables import AttemptRow, DependencyRow, EventRow, IdempotencyRow, TaskRow

NOW = 1_750_000_000_000
LEASE = 60_000
TABLES = [model.__tablename__ for model in (TaskRow, AttemptRow, DependencyRow, IdempotencyRow, EventRow)]
VERSION_TABLE = "hexlabs_tasks_alembic_version"

_UNSET: Any = object()


def make_row(
    task_id: str,
    *,
    perform_at: int = NOW,
    due_at: int | None = _UNSET,
    status: str = "pending",
    **overrides: Any,
) -> TaskRow:
    """A task row with plain defaults; ``due_at`` defaults to ``perform_at``."""
    values: dict[str, Any] = {
        "id": task_id,
        "url": f"https://target.example/{task_id}",
        "method": "POST",
        "headers": {},
        "params": {},
        "body": None,
        "timeout": 30,
        "perform_at": perform_at,
        "retries": 3,
        "retry_policy": {},
        "depends_on": [],
        "status": status,
        "due_at": perform_at if due_at is _UNSET else due_at,
        "created_at": NOW - 1_000,
        "updated_at": NOW - 1_000,
    }
    values.update(overrides)
    return TaskRow(**values)


def make_attempt(task_id: str, number: int = 1, **overrides: Any) -> AttemptRow:
    values: dict[str, Any] = {
        "task_id": task_id,
        "number": number,
        "started_at": NOW,
        "finished_at": NOW + 50,
        "status": 200,
        "duration_ms": 50,
    }
    values.update(overrides)
    return AttemptRow(**values)


async def seed(store: Store, *rows: TaskRow) -> None:
    """Store rows in one transaction (faster than one ``insert`` each)."""
    async with store.write() as session:
        session.add_all(rows)


async def all_rows(store: Store, model: type[Any]) -> list[Any]:
    async with store.read() as session:
        return list((await session.execute(select(model))).scalars())


async def claim(store: Store, owner: str = "worker-a", *, now: int = NOW, limit: int = 10, **kw: Any) -> list[TaskRow]:
    return await store.claim_due(owner=owner, now=now, lease_until=now + LEASE, limit=limit, **kw)


def ids(rows: list[TaskRow]) -> list[str]:
    return [row.id for row in rows]


async def migrate(url: str) -> None:
    # Alembic runs its own event loop (asyncio.run), so it goes to a thread, as Store.migrate does.
    await asyncio.to_thread(upgrade, normalize_database_url(url))


async def migrate_sqlite_template(url: str) -> None:
    await migrate(url)
    store = Store(url)  # its first connection switches the file to WAL, which the copies then inherit
    await store.get("-")
    await store.dispose()


# -- databases -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_user() -> str:
    user = postgres_user()
    if user is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 as postgres or root (trust auth, database test)")
    return user


@pytest.fixture(scope="module")
def pg_database(pg_user: str) -> Iterator[str]:
    """A migrated database of this module's own, dropped at the end."""
    name = run_in_thread(create_postgres_database, pg_user)
    try:
        run_in_thread(migrate, postgres_url(pg_user, name))
        yield name
    finally:
        run_in_thread(drop_postgres_database, pg_user, name)


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test works on a copy."""
    path = tmp_path_factory.mktemp("store") / "template.db"
    run_in_thread(migrate_sqlite_template, f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None, str | None]:
    """A migrated database: its URL and, for PostgreSQL, the user and database name (tables not yet emptied)."""
    if backend == "sqlite":
        path = tmp_path / "tasks.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}", None, None
    user: str = request.getfixturevalue("pg_user")
    name: str = request.getfixturevalue("pg_database")
    return postgres_url(user, name), user, name


@pytest.fixture
async def database_url(database: tuple[str, str | None, str | None]) -> str:
    """The URL of a migrated database with empty tables."""
    url, user, name = database
    if user is not None and name is not None:
        await empty_postgres_tables(user, name, TABLES)
    return url


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with no tables at all."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    user: str = request.getfixturevalue("pg_user")
    name = run_in_thread(create_postgres_database, user)
    try:
        yield postgres_url(user, name)
    finally:
        run_in_thread(drop_postgres_database, user, name)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    try:
        yield store
    finally:
        await store.dispose()


# -- migrations ----------------------------------------------------------------------------------------------


async def table_names(store: Store) -> set[str]:
    async with store.engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def recorded_versions(store: Store) -> list[str]:
    async with store.engine.connect() as connection:
        return list((await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalars())


async def test_migrate_creates_the_tables_and_records_the_alembic_version(empty_database_url: str) -> None:
    store = Store(empty_database_url)
    try:
        assert await table_names(store) == set()
        await store.migrate()
        assert await table_names(store) == {*TABLES, VERSION_TABLE}
        head = ScriptDirectory.from_config(alembic_config(store.url)).get_current_head()
        assert head is not None
        assert await recorded_versions(store) == [head]
    finally:
        await store.dispose()


async def test_migrate_twice_keeps_the_schema_the_version_and_the_data(store: Store) -> None:
    await store.migrate()
    await store.insert(make_row("kept"))
    versions = await recorded_versions(store)

    await store.migrate()

    assert await table_names(store) == {*TABLES, VERSION_TABLE}
    assert await recorded_versions(store) == versions
    assert len(versions) == 1
    assert ids(await all_rows(store, TaskRow)) == ["kept"]


# -- insert, get, delete -------------------------------------------------------------------------------------


async def test_insert_then_get_returns_every_stored_field(store: Store) -> None:
    row = make_row(
        "t1",
        method="PUT",
        headers={"X-Token": "abc"},
        params={"page": 2, "tags": ["a", "b"]},
        body={"nested": {"list": [1, 2.5, None, True]}, "text": "héllo"},
        timeout=12.5,
        perform_at=NOW + 5_000,
        retries=7,
        retry_policy={"backoff": "linear", "initial_delay": 2},
        depends_on=["d1", "d2"],
        flow_run_id="flow-1",
    )
    await store.insert(row)

    got = await store.get("t1")

    assert got is not None
    assert got.model_dump() == {
        **make_row("t1").model_dump(),
        "method": "PUT",
        "headers": {"X-Token": "abc"},
        "params": {"page": 2, "tags": ["a", "b"]},
        "body": {"nested": {"list": [1, 2.5, None, True]}, "text": "héllo"},
        "timeout": 12.5,
        "perform_at": NOW + 5_000,
        "due_at": NOW + 5_000,
        "retries": 7,
        "retry_policy": {"backoff": "linear", "initial_delay": 2},
        "depends_on": ["d1", "d2"],
        "flow_run_id": "flow-1",
        "last_response": None,
        "attempts": 0,
        "generation": 0,
        "version": 0,
    }


async def test_insert_keeps_a_json_body_of_any_shape(store: Store) -> None:
    bodies: dict[str, Any] = {"none": None, "text": "plain text", "number": 42, "list": [1, "two"], "empty": {}}
    await seed(store, *(make_row(name, body=body) for name, body in bodies.items()))
    found = await store.get_many(bodies)
    assert {name: row.body for name, row in found.items()} == bodies


async def test_get_of_an_unknown_id_is_none(store: Store) -> None:
    assert await store.get("nope") is None


async def test_get_many_returns_the_existing_rows_by_id(store: Store) -> None:
    await seed(store, make_row("a"), make_row("b"), make_row("c"))

    found = await store.get_many(["a", "c", "missing"])

    assert set(found) == {"a", "c"}
    assert {key: row.id for key, row in found.items()} == {"a": "a", "c": "c"}
    assert await store.get_many([]) == {}


async def test_insert_stores_dependency_edges_and_idempotency_record(store: Store) -> None:
    key = IdempotencyRow(key="k1", request_hash="h" * 64, task_id="t1", created_at=NOW)
    await store.insert(make_row("t1", depends_on=["d1", "d2"]), idempotency=key, dependencies=["d1", "d2"])

    edges = {(edge.task_id, edge.depends_on_id) for edge in await all_rows(store, DependencyRow)}
    assert edges == {("t1", "d1"), ("t1", "d2")}
    found = await store.idempotency("k1", since=NOW - 1)
    assert found is not None
    assert (found.task_id, found.request_hash, found.created_at) == ("t1", "h" * 64, NOW)


async def test_insert_with_a_live_idempotency_key_fails_and_stores_nothing(store: Store) -> None:
    await store.insert(
        make_row("first"), idempotency=IdempotencyRow(key="k", request_hash="h1", task_id="first", created_at=NOW)
    )
    second = IdempotencyRow(key="k", request_hash="h2", task_id="second", created_at=NOW + 1_000)

    with pytest.raises(IntegrityError):
        await store.insert(make_row("second"), idempotency=second, dependencies=["first"])

    assert await store.get("second") is None
    assert await all_rows(store, DependencyRow) == []
    found = await store.idempotency("k", since=0)
    assert found is not None
    assert found.task_id == "first"


async def test_insert_replaces_an_idempotency_key_older_than_a_day(store: Store) -> None:
    old = IdempotencyRow(key="k", request_hash="h1", task_id="old", created_at=NOW - 86_400_001)
    await store.insert(make_row("old"), idempotency=old)

    await store.insert(
        make_row("new"), idempotency=IdempotencyRow(key="k", request_hash="h2", task_id="new", created_at=NOW)
    )

    found = await store.idempotency("k", since=0)
    assert found is not None
    assert (found.task_id, found.request_hash) == ("new", "h2")


async def test_delete_removes_the_task_with_its_attempts_edges_and_idempotency_keys(store: Store) -> None:
    for task_id in ("gone", "stays"):
        await store.insert(
            make_row(task_id, depends_on=["dep"]),
            idempotency=IdempotencyRow(key=f"key-{task_id}", request_hash="h", task_id=task_id, created_at=NOW),
            dependencies=["dep"],
        )
        async with store.write() as session:
            session.add_all([make_attempt(task_id, 1), make_attempt(task_id, 2)])

    removed = await store.delete("gone")

    assert removed is not None
    assert removed.id == "gone"
    assert await store.get("gone") is None
    assert await store.attempts("gone") == []
    assert await store.idempotency("key-gone", since=0) is None
    assert [edge.task_id for edge in await all_rows(store, DependencyRow)] == ["stays"]
    # The other task keeps everything.
    assert await store.get("stays") is not None
    assert [attempt.number for attempt in await store.attempts("stays")] == [1, 2]
    assert await store.idempotency("key-stays", since=0) is not None


async def test_delete_of_an_unknown_id_returns_none(store: Store) -> None:
    await store.insert(make_row("t1"))
    assert await store.delete("nope") is None
    assert await store.get("t1") is not None


# -- list and count ------------------------------------------------------------------------------------------


async def test_list_orders_by_perform_at_then_id(store: Store) -> None:
    await seed(
        store,
        make_row("c", perform_at=NOW + 2),
        make_row("b", perform_at=NOW + 1),
        make_row("z", perform_at=NOW),
        make_row("a", perform_at=NOW + 1),
        make_row("y", perform_at=NOW - 10),
    )

    rows, position = await store.list(status=None, limit=10, after=None)

    assert ids(rows) == ["y", "z", "a", "b", "c"]
    assert position is None


async def test_list_filters_by_status(store: Store) -> None:
    await seed(
        store,
        make_row("p1", perform_at=NOW + 1),
        make_row("done", status="completed", due_at=None),
        make_row("p2", perform_at=NOW - 1),
        make_row("f", status="failed", due_at=None),
    )

    pending, _ = await store.list(status="pending", limit=10, after=None)
    completed, _ = await store.list(status="completed", limit=10, after=None)
    cancelled, _ = await store.list(status="cancelled", limit=10, after=None)

    assert ids(pending) == ["p2", "p1"]
    assert ids(completed) == ["done"]
    assert cancelled == []


async def test_list_of_an_empty_store_is_one_empty_page(store: Store) -> None:
    assert await store.list(status=None, limit=5, after=None) == ([], None)


async def page_through(store: Store, *, status: str | None, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    after: tuple[int, str] | None = None
    while True:
        rows, position = await store.list(status=status, limit=limit, after=after)
        assert len(rows) <= limit
        pages.append(ids(rows))
        if position is None:
            return pages
        assert position == (rows[-1].perform_at, rows[-1].id)
        after = position
        assert len(pages) < 100, "paging does not end"


async def test_list_pages_through_every_task_once_despite_ties_on_perform_at(store: Store) -> None:
    # 23 tasks over 5 distinct perform_at values, ids inserted out of order.
    rows = [make_row(f"t{n:02d}", perform_at=NOW + (n * 7) % 5) for n in range(23)]
    await seed(store, *reversed(rows))
    expected = [row.id for row in sorted(rows, key=lambda r: (r.perform_at, r.id))]

    for limit in (1, 3, 22, 23, 24):
        pages = await page_through(store, status=None, limit=limit)
        flat = [task_id for page in pages for task_id in page]
        assert flat == expected, f"limit={limit}"
        # Every page but the last is full, and the last is never empty (no trailing empty page).
        assert all(len(page) == limit for page in pages[:-1]), f"limit={limit}"
        assert pages[-1], f"limit={limit}"


async def test_list_pages_within_a_status(store: Store) -> None:
    rows = [
        make_row(f"t{n:02d}", perform_at=NOW + n % 3, status="pending" if n % 2 else "completed") for n in range(15)
    ]
    await seed(store, *rows)
    expected = [row.id for row in sorted(rows, key=lambda r: (r.perform_at, r.id)) if row.status == "pending"]

    pages = await page_through(store, status="pending", limit=2)

    assert [task_id for page in pages for task_id in page] == expected


async def test_list_after_a_position_of_a_deleted_task_continues_from_it(store: Store) -> None:
    await seed(store, *(make_row(name, perform_at=NOW) for name in ("a", "b", "c", "d")))
    first, position = await store.list(status=None, limit=2, after=None)
    assert position == (NOW, "b")
    await store.delete("b")

    rest, end = await store.list(status=None, limit=2, after=position)

    assert ids(first) == ["a", "b"]
    assert ids(rest) == ["c", "d"]
    assert end is None


async def test_count_counts_all_tasks_or_those_of_a_status(store: Store) -> None:
    await seed(store, make_row("a"), make_row("b"), make_row("c", status="completed", due_at=None))
    assert await store.count() == 3
    assert await store.count("pending") == 2
    assert await store.count("failed") == 0


# -- compare and set -----------------------------------------------------------------------------------------


async def test_compare_and_set_with_the_current_version_applies_values_and_bumps_it(store: Store) -> None:
    await store.insert(make_row("t1"))

    changed = await store.compare_and_set("t1", 0, {"status": "cancelled", "due_at": None, "updated_at": NOW})

    assert changed is not None
    assert (changed.status, changed.due_at, changed.updated_at, changed.version) == ("cancelled", None, NOW, 1)
    stored = await store.get("t1")
    assert stored is not None
    assert (stored.status, stored.version) == ("cancelled", 1)
    again = await store.compare_and_set("t1", 1, {"retries": 9})
    assert again is not None
    assert (again.retries, again.version) == (9, 2)


async def test_compare_and_set_with_a_stale_version_changes_nothing(store: Store) -> None:
    await store.insert(make_row("t1"), dependencies=["d1"])
    assert await store.compare_and_set("t1", 0, {"retries": 5}) is not None

    stale = await store.compare_and_set("t1", 0, {"retries": 9, "status": "cancelled"}, dependencies=["other"])

    assert stale is None
    stored = await store.get("t1")
    assert stored is not None
    assert (stored.retries, stored.status, stored.version) == (5, "pending", 1)
    assert [edge.depends_on_id for edge in await all_rows(store, DependencyRow)] == ["d1"]


async def test_compare_and_set_of_an_unknown_task_is_none(store: Store) -> None:
    assert await store.compare_and_set("nope", 0, {"retries": 1}) is None


async def test_compare_and_set_replaces_the_dependency_edges_when_given(store: Store) -> None:
    await store.insert(make_row("t1", depends_on=["a", "b"]), dependencies=["a", "b"])

    changed = await store.compare_and_set("t1", 0, {"depends_on": ["b", "c"]}, dependencies=["b", "c"])
    assert changed is not None
    assert changed.depends_on == ["b", "c"]
    edges = {(edge.task_id, edge.depends_on_id) for edge in await all_rows(store, DependencyRow)}
    assert edges == {("t1", "b"), ("t1", "c")}

    # Without ``dependencies`` the edges stay as they are.
    assert await store.compare_and_set("t1", 1, {"retries": 1}) is not None
    assert {edge.depends_on_id for edge in await all_rows(store, DependencyRow)} == {"b", "c"}


# -- claiming ------------------------------------------------------------------------------------------------


async def test_claim_due_takes_only_due_unheld_pending_or_running_tasks(store: Store) -> None:
    await seed(
        store,
        make_row("past", due_at=NOW - 1_000),
        make_row("exactly-now", due_at=NOW),
        make_row("retry-due", status="running", due_at=NOW - 5),
        make_row("future", due_at=NOW + 1),
        make_row("no-due-at", due_at=None),
        make_row("held", status="running", due_at=NOW - 1, lease_owner="other", lease_expires_at=NOW + LEASE),
        # final tasks have no due time: every way a task ends clears it (see the test below)
        make_row("completed", status="completed", due_at=None, perform_at=NOW - 1),
        make_row("failed", status="failed", due_at=None, perform_at=NOW - 1),
        make_row("cancelled", status="cancelled", due_at=None, perform_at=NOW - 1),
    )

    claimed = await claim(store, limit=100)

    assert sorted(ids(claimed)) == ["exactly-now", "past", "retry-due"]
    assert await claim(store, "worker-b", limit=100) == []


async def test_every_way_a_task_ends_leaves_it_without_a_due_time(store: Store) -> None:
    # The claim goes by due time and holder alone: this is the invariant that makes that safe.
    await seed(
        store,
        make_row("completes", due_at=NOW - 1),
        make_row("fails", due_at=NOW - 1),
        make_row("retries", due_at=NOW - 1),
        make_row("dependent", due_at=None),
        make_row("waits-on-dependent", due_at=None),
    )
    async with store.write() as session:
        session.add_all(
            [
                DependencyRow(task_id="dependent", depends_on_id="fails"),
                DependencyRow(task_id="waits-on-dependent", depends_on_id="dependent"),
            ]
        )
    held = {row.id: row for row in await claim(store, limit=10)}
    verdicts = {
        "completes": Decision(Verdict.COMPLETED),
        "fails": Decision(Verdict.FAILED, reason="404"),
        "retries": Decision(Verdict.RETRY, delay=5.0),
    }
    for task_id, decision in verdicts.items():
        row = held[task_id]
        finished = await store.finish_attempt(
            task_id=task_id,
            owner="worker-a",
            attempt=make_attempt(task_id),
            values=outcome_values(row, decision, NOW + 10, None),
        )
        assert finished is not None

    stored = {row.id: row for row in await all_rows(store, TaskRow)}
    assert {task_id: (row.status, row.due_at) for task_id, row in stored.items()} == {
        "completes": ("completed", None),
        "fails": ("failed", None),
        "retries": ("running", NOW + 10 + 5_000),
        "dependent": ("cancelled", None),
        "waits-on-dependent": ("cancelled", None),
    }
    assert ids(await claim(store, now=NOW + 10_000, limit=10)) == ["retries"]


async def test_finding_and_claiming_due_tasks_reads_only_due_rows_however_many_wait(store: Store) -> None:
    # 10,000 tasks due tomorrow and one due now. The worker's two queries per attempt (the next due time, the
    # claim) must reach the due task through the due_at index (or the primary key), never by walking every pending
    # task, or their cost grows with the backlog. No ANALYZE: the plan must not depend on table statistics, which
    # a database may lack (autovacuum off, or not yet caught up with a bulk insert).
    tomorrow = NOW + 86_400_000
    pending = [make_row(f"p{n:05d}", due_at=tomorrow + n) for n in range(10_000)]
    await seed(store, make_row("now", due_at=NOW - 1), *pending)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(("UPDATE", "WITH", "SELECT MIN")):  # PostgreSQL's claim: WITH
            captured.append((statement, parameters))

    event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
    try:
        assert await store.next_due_at() == NOW - 1
        assert ids(await claim(store, limit=8)) == ["now"]
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", capture)
    assert len(captured) == 2

    for statement, parameters in captured:
        async with store.engine.connect() as connection:
            explain = "EXPLAIN QUERY PLAN " if store.is_sqlite else "EXPLAIN "
            lines = await connection.exec_driver_sql(explain + statement, parameters)
            plan = [" ".join(map(str, line)) for line in lines]
            await connection.rollback()
        text_plan = "\n".join(plan)
        assert "ix_hexlabs_tasks_status_perform_at_id" not in text_plan, text_plan
        assert "ix_hexlabs_tasks_due_at" in text_plan, text_plan
        if store.is_sqlite:
            scans = [line for line in plan if "hexlabs_tasks" in line]
            assert all("ix_hexlabs_tasks_due_at" in line or "sqlite_autoindex" in line for line in scans), text_plan
        else:
            assert "Seq Scan" not in text_plan, text_plan


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_postgres_plans_each_claim_for_the_table_as_it_is_not_as_it_was(store: Store) -> None:
    # A worker starts on an empty table; PostgreSQL would cache a generic plan for its prepared claim after five
    # runs (a seq scan: cheapest on an empty table) and keep it as tasks pile up. Each claim must be planned anew.
    for _ in range(8):
        assert await claim(store) == []
    await seed(store, make_row("due", due_at=NOW - 1))
    assert ids(await claim(store)) == ["due"]

    async with store.read() as session:  # one test at a time: the same pooled connection the claims used
        counts = (
            await session.execute(
                text(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE statement LIKE 'WITH due AS MATERIALIZED%UPDATE hexlabs_tasks SET status%'"
                )
            )
        ).all()
    assert counts, "the claim was not a prepared statement on this connection"
    assert sum(generic for generic, _ in counts) == 0
    assert sum(custom for _, custom in counts) >= 9


async def test_claim_due_marks_the_tasks_running_and_held_by_the_owner(store: Store) -> None:
    await seed(store, make_row("t1", due_at=NOW - 10, attempts=2, version=4))

    [returned] = await claim(store, "worker-a", now=NOW)
    stored = await store.get("t1")

    assert stored is not None
    for row in (returned, stored):
        assert row.status == "running"
        assert row.lease_owner == "worker-a"
        assert row.lease_expires_at == NOW + LEASE
        assert row.attempt_started_at == NOW
        assert row.attempts == 3
        assert row.due_at is None
        assert row.version == 5
        assert row.updated_at == NOW


async def test_claim_due_takes_at_most_limit_tasks_earliest_due_first(store: Store) -> None:
    await seed(store, *(make_row(f"t{n}", perform_at=NOW - 100, due_at=NOW - 10 * n) for n in range(6)))

    first = await claim(store, limit=2)
    second = await claim(store, limit=2)

    assert sorted(ids(first)) == ["t4", "t5"]
    assert sorted(ids(second)) == ["t2", "t3"]


async def test_claim_due_returns_rows_ordered_by_perform_at_then_id(store: Store) -> None:
    await seed(
        store,
        make_row("b", perform_at=NOW - 5, due_at=NOW - 50),
        make_row("c", perform_at=NOW - 9, due_at=NOW - 40),
        make_row("a", perform_at=NOW - 5, due_at=NOW - 30),
    )
    assert ids(await claim(store)) == ["c", "a", "b"]


async def test_claim_due_with_task_id_takes_only_that_task(store: Store) -> None:
    await seed(store, make_row("a", due_at=NOW - 2), make_row("b", due_at=NOW - 1), make_row("later", due_at=NOW + 1))

    assert ids(await claim(store, task_id="b")) == ["b"]
    assert await claim(store, task_id="b") == []  # already held
    assert await claim(store, task_id="later") == []  # not due yet
    assert await claim(store, task_id="nope") == []

    a = await store.get("a")
    assert a is not None
    assert (a.lease_owner, a.status, a.due_at) == (None, "pending", NOW - 2)


async def test_concurrent_claimers_take_every_due_task_exactly_once(database_url: str) -> None:
    total, claimers, batch = 200, 4, 20
    async with AsyncExitStack() as stack:
        # One Store (engine, pool) per claimer, like separate worker processes on the same database.
        stores = [Store(database_url) for _ in range(claimers)]
        for each in stores:
            stack.push_async_callback(each.dispose)
        await seed(stores[0], *(make_row(f"t{n:03d}", due_at=NOW - n % 7) for n in range(total)))

        async def claim_until_none_left(store: Store, owner: str) -> list[TaskRow]:
            taken: list[TaskRow] = []
            while rows := await claim(store, owner, limit=batch):
                assert len(rows) <= batch
                taken.extend(rows)
            return taken

        results = await asyncio.gather(*(claim_until_none_left(each, f"worker-{n}") for n, each in enumerate(stores)))

        claimed_by = Counter(row.id for rows in results for row in rows)
        duplicates = {task_id: times for task_id, times in claimed_by.items() if times > 1}
        assert duplicates == {}
        assert len(claimed_by) == total
        stored = {row.id: row for row in await all_rows(stores[0], TaskRow)}
        for n, rows in enumerate(results):
            for row in rows:
                assert row.lease_owner == f"worker-{n}"
                assert stored[row.id].lease_owner == f"worker-{n}"
        assert all(row.attempts == 1 and row.status == "running" for row in stored.values())


async def test_next_due_at_is_the_earliest_due_time(store: Store) -> None:
    assert await store.next_due_at() is None
    await seed(
        store,
        # held and waiting tasks have no due time: a claim clears it, a dependency has not set it yet
        make_row("held", status="running", due_at=None, lease_owner="w", lease_expires_at=NOW + LEASE),
        make_row("waiting", due_at=None),
        make_row("later", due_at=NOW + 200),
        make_row("sooner", due_at=NOW + 100),
    )

    assert await store.next_due_at() == NOW + 100

    await store.delete("sooner")
    await store.delete("later")
    assert await store.next_due_at() is None


# -- the holder's side ---------------------------------------------------------------------------------------


async def test_renew_leases_extends_and_returns_only_the_tasks_still_held_by_the_owner(store: Store) -> None:
    await seed(store, *(make_row(name, due_at=NOW - 1) for name in ("a1", "a2", "a3")), make_row("b1", due_at=NOW))
    await claim(store, "worker-a", task_id="a1")
    await claim(store, "worker-a", task_id="a2")
    await claim(store, "worker-a", task_id="a3")
    await claim(store, "worker-b", task_id="b1")
    await store.delete("a3")

    held = await store.renew_leases(owner="worker-a", task_ids=["a1", "a2", "a3", "b1"], lease_until=NOW + 999_999)

    assert held == {"a1", "a2"}
    rows = await store.get_many(["a1", "a2", "b1"])
    assert rows["a1"].lease_expires_at == NOW + 999_999
    assert rows["a2"].lease_expires_at == NOW + 999_999
    assert rows["b1"].lease_expires_at == NOW + LEASE
    assert await store.renew_leases(owner="worker-a", task_ids=[], lease_until=NOW) == set()


DONE = {"status": "completed", "completed_at": NOW + 50, "updated_at": NOW + 50, "last_response": {"status": 200}}


async def test_finish_attempt_of_the_holder_records_the_attempt_and_applies_the_values(store: Store) -> None:
    await seed(store, make_row("t1", due_at=NOW))
    [claimed] = await claim(store, "worker-a")

    finished = await store.finish_attempt(
        task_id="t1", owner="worker-a", attempt=make_attempt("t1", 1, response_excerpt="ok"), values=DONE
    )

    assert finished is not None
    stored = await store.get("t1")
    assert stored is not None
    for row in (finished, stored):
        assert (row.status, row.completed_at, row.last_response) == ("completed", NOW + 50, {"status": 200})
        assert (row.lease_owner, row.lease_expires_at) == (None, None)
        assert row.version == claimed.version + 1
    [attempt] = await store.attempts("t1")
    assert attempt.id is not None
    assert (attempt.number, attempt.started_at, attempt.finished_at, attempt.status) == (1, NOW, NOW + 50, 200)
    assert (attempt.duration_ms, attempt.response_excerpt) == (50, "ok")


async def test_finish_attempts_records_many_attempts_in_one_call_each_as_finish_attempt_would(store: Store) -> None:
    await seed(store, *(make_row(f"t{n}", due_at=NOW) for n in range(5)))
    await claim(store, "worker-a")
    finishes = [Finish(f"t{n}", "worker-a", make_attempt(f"t{n}", 1), DONE) for n in range(4)]
    finishes.append(Finish("t4", "worker-b", make_attempt("t4", 1), DONE))  # not its holder

    results = await store.finish_attempts(finishes)

    assert [r.status if isinstance(r, TaskRow) else r for r in results] == [*["completed"] * 4, None]
    rows = await store.get_many([f"t{n}" for n in range(5)])
    assert [rows[f"t{n}"].status for n in range(5)] == [*["completed"] * 4, "running"]
    assert [len(await store.attempts(f"t{n}")) for n in range(5)] == [1, 1, 1, 1, 0]


async def test_finish_attempts_with_one_failing_attempt_still_records_the_others(store: Store) -> None:
    await seed(store, *(make_row(f"t{n}", due_at=NOW) for n in ("0", "1", "2")))
    await claim(store, "worker-a")
    bad = make_attempt("t1", 1, started_at=None)  # breaks a NOT NULL column: the insert fails
    finishes = [
        Finish("t0", "worker-a", make_attempt("t0", 1), DONE),
        Finish("t1", "worker-a", bad, DONE),
        Finish("t2", "worker-a", make_attempt("t2", 1), DONE),
    ]

    results = await store.finish_attempts(finishes)

    assert isinstance(results[0], TaskRow) and isinstance(results[2], TaskRow)
    assert isinstance(results[1], Exception)
    rows = await store.get_many(["t0", "t1", "t2"])
    assert [rows[t].status for t in ("t0", "t1", "t2")] == ["completed", "running", "completed"]
    assert await store.attempts("t1") == []


async def test_finish_attempt_of_anyone_but_the_holder_of_that_attempt_changes_nothing(store: Store) -> None:
    await seed(store, make_row("t1", due_at=NOW))
    [claimed] = await claim(store, "worker-a")

    # Another worker, then the holder naming a later and an earlier attempt than the one it holds.
    for owner, number in [("worker-b", 1), ("worker-a", 2), ("worker-a", 0)]:
        attempt = make_attempt("t1", number)
        result = await store.finish_attempt(task_id="t1", owner=owner, attempt=attempt, values=DONE)
        assert result is None, (owner, number)

    assert await store.attempts("t1") == []
    stored = await store.get("t1")
    assert stored is not None
    assert stored.model_dump() == claimed.model_dump()


async def test_finish_attempt_of_a_task_no_one_holds_changes_nothing(store: Store) -> None:
    await seed(store, make_row("t1", due_at=NOW, attempts=1))
    result = await store.finish_attempt(task_id="t1", owner="worker-a", attempt=make_attempt("t1", 1), values=DONE)
    assert result is None
    assert await store.attempts("t1") == []


async def test_finish_attempt_with_expired_before_takes_over_only_an_expired_lease(store: Store) -> None:
    await seed(store, make_row("t1", due_at=NOW))
    await claim(store, "dead-worker")  # lease_expires_at == NOW + LEASE
    values = {"status": "pending", "due_at": NOW + LEASE + 1, "updated_at": NOW + LEASE + 1}

    not_yet = await store.finish_attempt(
        task_id="t1",
        owner="dead-worker",
        attempt=make_attempt("t1", 1, error="worker lost"),
        values=values,
        expired_before=NOW + LEASE,  # the lease ends exactly then: not expired before it
    )
    assert not_yet is None
    assert await store.attempts("t1") == []

    taken_over = await store.finish_attempt(
        task_id="t1",
        owner="dead-worker",
        attempt=make_attempt("t1", 1, error="worker lost"),
        values=values,
        expired_before=NOW + LEASE + 1,
    )
    assert taken_over is not None
    assert (taken_over.status, taken_over.due_at, taken_over.lease_owner) == ("pending", NOW + LEASE + 1, None)
    assert [attempt.error for attempt in await store.attempts("t1")] == ["worker lost"]


async def test_release_gives_the_attempt_back_due_again_and_unheld(store: Store) -> None:
    await seed(store, make_row("t1", due_at=NOW - 1))
    [claimed] = await claim(store, "worker-a")
    assert claimed.attempts == 1

    assert await store.release(task_id="t1", owner="worker-a", attempts=1, due_at=NOW + 10) is True

    stored = await store.get("t1")
    assert stored is not None
    assert stored.attempts == 0
    assert stored.status == "pending"  # it never ran
    assert stored.due_at == NOW + 10
    assert (stored.lease_owner, stored.lease_expires_at, stored.attempt_started_at) == (None, None, None)
    assert stored.version == claimed.version + 1
    assert await store.next_due_at() == NOW + 10
    [again] = await claim(store, "worker-b", now=NOW + 10)
    assert (again.id, again.attempts, again.lease_owner) == ("t1", 1, "worker-b")


async def test_release_by_anyone_but_the_holder_of_that_attempt_changes_nothing(store: Store) -> None:
    await seed(store, make_row("t1", due_at=NOW - 1))
    [claimed] = await claim(store, "worker-a")

    assert await store.release(task_id="t1", owner="worker-b", attempts=1, due_at=NOW) is False
    assert await store.release(task_id="t1", owner="worker-a", attempts=2, due_at=NOW) is False
    assert await store.release(task_id="nope", owner="worker-a", attempts=1, due_at=NOW) is False

    stored = await store.get("t1")
    assert stored is not None
    assert stored.model_dump() == claimed.model_dump()


async def test_expired_leases_are_the_held_tasks_whose_lease_ran_out(store: Store) -> None:
    await seed(
        store,
        make_row("expired", status="running", due_at=None, lease_owner="w", lease_expires_at=NOW - 1),
        make_row("ends-now", status="running", due_at=None, lease_owner="w", lease_expires_at=NOW),
        make_row("alive", status="running", due_at=None, lease_owner="w", lease_expires_at=NOW + 1),
        make_row("unheld", due_at=NOW - 100),
    )

    assert ids(await store.expired_leases(now=NOW)) == ["expired"]
    assert sorted(ids(await store.expired_leases(now=NOW + 2))) == ["alive", "ends-now", "expired"]
    assert len(await store.expired_leases(now=NOW + 2, limit=2)) == 2


# -- Prefect mirroring ---------------------------------------------------------------------------------------


async def test_owed_to_prefect_lists_the_tasks_that_owe_a_state(store: Store) -> None:
    await seed(
        store,
        make_row("owes", status="completed", due_at=None, prefect_owed="COMPLETED"),
        make_row("settled", status="completed", due_at=None),
        make_row("owes-too", status="failed", due_at=None, prefect_owed="FAILED"),
    )

    assert sorted(ids(await store.owed_to_prefect())) == ["owes", "owes-too"]
    assert len(await store.owed_to_prefect(limit=1)) == 1


async def test_settle_prefect_clears_only_rows_still_owing_the_delivered_state(store: Store) -> None:
    await seed(
        store,
        make_row("a", status="completed", due_at=None, prefect_owed="COMPLETED"),
        make_row("b", status="cancelled", due_at=None, prefect_owed="CANCELLED"),  # moved on after the read
        make_row("c", status="failed", due_at=None, prefect_owed="FAILED"),  # not delivered
    )

    await store.settle_prefect({"a": "COMPLETED", "b": "FAILED", "gone": "COMPLETED"})
    await store.settle_prefect({})

    rows = await store.get_many(["a", "b", "c"])
    assert {task_id: row.prefect_owed for task_id, row in rows.items()} == {
        "a": None,
        "b": "CANCELLED",
        "c": "FAILED",
    }


# -- idempotency ---------------------------------------------------------------------------------------------


async def test_idempotency_ignores_records_older_than_since(store: Store) -> None:
    key = IdempotencyRow(key="k", request_hash="h", task_id="t1", created_at=NOW)
    await store.insert(make_row("t1"), idempotency=key)

    assert await store.idempotency("k", since=NOW - 1) is not None
    assert await store.idempotency("k", since=NOW) is not None  # created exactly at `since` still counts
    assert await store.idempotency("k", since=NOW + 1) is None
    assert await store.idempotency("other", since=0) is None


async def test_store_queries_raise_no_deprecation_warning(store: Store) -> None:
    await store.insert(make_row("t1"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await store.get_many(["t1"])
        await store.list(status=None, limit=1, after=None)
        await claim(store)
    assert [str(warning.message) for warning in caught if warning.category is DeprecationWarning] == []


# -- URLs and cursors (no database) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///tasks.db", "sqlite+aiosqlite:///tasks.db"),
        ("sqlite:////var/lib/tasks.db", "sqlite+aiosqlite:////var/lib/tasks.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+aiosqlite:///tasks.db", "sqlite+aiosqlite:///tasks.db"),
        ("postgresql://u:p%40ss@db:5432/tasks", "postgresql+asyncpg://u:p%40ss@db:5432/tasks"),
        ("postgres://u@db/tasks", "postgresql+asyncpg://u@db/tasks"),
        ("postgresql+psycopg://u@db/tasks", "postgresql+asyncpg://u@db/tasks"),
        ("postgresql+asyncpg://u@db/tasks", "postgresql+asyncpg://u@db/tasks"),
    ],
)
def test_normalize_database_url_maps_plain_schemes_to_the_async_drivers(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize("url", ["mysql://u@db/tasks", "mysql+aiomysql://u@db/tasks", "oracle://u@db/tasks"])
def test_normalize_database_url_rejects_other_databases(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported database URL scheme"):
        normalize_database_url(url)


@pytest.mark.parametrize(
    ("perform_at", "task_id"),
    [(NOW, "0f3a9c"), (0, "a"), (-5, "x"), (2**62, "id:with:colons"), (NOW, ""), (1, "ünïcødé/+=")],
)
def test_cursor_round_trips(perform_at: int, task_id: str) -> None:
    cursor = encode_cursor(perform_at, task_id)
    assert "=" not in cursor
    assert decode_cursor(cursor) == (perform_at, task_id)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!!", "a", "é", _b64(b"no-colon"), _b64(b"abc:id"), _b64(b"1.5:id"), _b64(b"\xff\xfe:id")],
)
def test_decode_cursor_rejects_garbage(cursor: str) -> None:
    with pytest.raises(TaskValidationError) as caught:
        decode_cursor(cursor)
    assert caught.value.details == [{"field": "cursor", "message": "not a cursor from this service"}]


# -- upgrades in place ---------------------------------------------------------------------------------------


async def test_an_existing_first_version_database_is_upgraded_in_place(empty_database_url: str) -> None:
    store = Store(empty_database_url)
    try:
        await asyncio.to_thread(upgrade, store.url, "0001")
        async with store.engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO hexlabs_tasks (id, url, method, headers, params, timeout, perform_at, retries, "
                    "retry_policy, depends_on, status, attempts, generation, version, created_at, updated_at) VALUES "
                    "('old', 'https://x.example/', 'post', '{}', '{}', 30, 1, 3, '{}', '[]', 'pending', 0, 0, 0, 1, 1)"
                )
            )
        await store.migrate()
        kept = await store.get("old")
        assert kept is not None
        assert (kept.url, kept.chain_id, kept.chain_step) == ("https://x.example/", None, 1)
        assert "hexlabs_task_events" in await table_names(store)
    finally:
        await store.dispose()


# -- chains: release and cancel ------------------------------------------------------------------------------


async def test_completing_a_dependency_releases_its_waiting_dependent_in_the_same_transaction(store: Store) -> None:
    await store.insert(make_row("a"))
    await store.insert(make_row("b", perform_at=NOW + 500, due_at=None, depends_on=["a"]), dependencies=["a"])
    (claimed,) = await store.claim_due(owner="w", now=NOW, lease_until=NOW + 30_000, limit=10)
    done = await store.finish_attempt(
        task_id="a",
        owner="w",
        attempt=make_attempt("a"),
        values={"status": "completed", "completed_at": NOW + 100, "updated_at": NOW + 100, "due_at": None},
    )
    assert done is not None and claimed.id == "a"
    released = await store.get("b")
    assert released is not None and released.due_at == NOW + 500  # the later of its performAt and the completion


async def test_a_failed_dependency_cancels_its_dependents_transitively(store: Store) -> None:
    await store.insert(make_row("a"))
    await store.insert(make_row("b", due_at=None, depends_on=["a"]), dependencies=["a"])
    await store.insert(make_row("c", due_at=None, depends_on=["b"]), dependencies=["b"])
    await store.claim_due(owner="w", now=NOW, lease_until=NOW + 30_000, limit=10)
    await store.finish_attempt(
        task_id="a",
        owner="w",
        attempt=make_attempt("a"),
        values={"status": "failed", "completed_at": NOW, "updated_at": NOW, "due_at": None},
    )
    b, c = await store.get("b"), await store.get("c")
    assert b is not None and c is not None
    assert (b.status, b.last_error, b.prefect_owed) == ("cancelled", "dependency a failed", "CANCELLED")
    assert (c.status, c.last_error) == ("cancelled", "dependency b was cancelled")


async def test_deleting_a_dependency_cancels_its_dependents(store: Store) -> None:
    await store.insert(make_row("a", perform_at=NOW + 60_000))
    await store.insert(make_row("b", due_at=None, depends_on=["a"]), dependencies=["a"])
    await store.delete("a")
    b = await store.get("b")
    assert b is not None and (b.status, b.last_error) == ("cancelled", "dependency a was deleted")


async def test_recheck_releases_a_dependent_whose_dependencies_already_completed(store: Store) -> None:
    await store.insert(make_row("a", status="completed", due_at=None, completed_at=NOW - 10))
    await store.insert(make_row("b", perform_at=NOW - 50, due_at=None, depends_on=["a"]), dependencies=["a"])
    assert await store.recheck_waiting(None, NOW) == []
    b = await store.get("b")
    assert b is not None and b.due_at == NOW - 10


# -- concurrent writers --------------------------------------------------------------------------------------

RETRY_SOON = {"status": "running", "due_at": NOW - 1, "updated_at": NOW + 50, "prefect_owed": "AWAITING_RETRY"}


async def test_a_worker_s_concurrent_writes_on_the_same_rows_never_fail_each_other(
    database_url: str, backend: str
) -> None:
    """What one worker does at once under load, on rows it shares: renew its leases, record finished attempts in
    batches (each due again for a retry and owing Prefect a state), settle delivered Prefect states, and claim the
    tasks due again, all in shuffled orders. PostgreSQL once aborted these with "deadlock detected" (two writes
    locking the same rows in opposite orders); every write must succeed and every attempt be recorded once."""
    import random

    total, batch = 120, 15
    rounds = 3 if backend == "postgres" else 1  # SQLite has one writer at a time: nothing to deadlock
    rng = random.Random(7)
    async with AsyncExitStack() as stack:
        store, claimer = Store(database_url), Store(database_url)
        stack.push_async_callback(store.dispose)
        stack.push_async_callback(claimer.dispose)
        names = [f"t{n:03d}" for n in range(total)]
        for round_ in range(rounds):
            owner = f"worker-{round_}"
            await seed(store, *(make_row(f"{name}-{round_}", due_at=NOW - 5) for name in names))
            held = ids(await claim(store, owner, limit=total))
            assert len(held) == total
            finishes = [Finish(task_id, owner, make_attempt(task_id, 1), RETRY_SOON) for task_id in held]
            rng.shuffle(finishes)
            stop = asyncio.Event()

            async def renew(held: list[str] = held, owner: str = owner, stop: asyncio.Event = stop) -> int:
                renewals = 0
                while not stop.is_set():
                    await store.renew_leases(owner=owner, task_ids=rng.sample(held, len(held)), lease_until=NOW + 1)
                    renewals += 1
                    await asyncio.sleep(0.005)  # SQLite's one writer lock: let the others have it too
                return renewals

            async def settle(held: list[str] = held, stop: asyncio.Event = stop) -> None:
                while not stop.is_set():
                    await store.settle_prefect({task_id: "AWAITING_RETRY" for task_id in rng.sample(held, len(held))})
                    await asyncio.sleep(0.005)

            async def reclaim(stop: asyncio.Event = stop) -> list[TaskRow]:
                taken: list[TaskRow] = []
                while not stop.is_set():
                    taken += await claim(claimer, "worker-b", limit=10)
                    await asyncio.sleep(0.005)
                return taken

            async def record(finishes: list[Finish] = finishes, stop: asyncio.Event = stop) -> list[Any]:
                try:
                    chunks = [finishes[i : i + batch] for i in range(0, len(finishes), batch)]
                    done = await asyncio.gather(*(store.finish_attempts(chunk) for chunk in chunks))
                    return [result for chunk in done for result in chunk]
                finally:
                    stop.set()

            renewals, _, reclaimed, recorded = await asyncio.gather(renew(), settle(), reclaim(), record())

            assert renewals > 0
            assert [r for r in recorded if not isinstance(r, TaskRow)] == []
            assert len({r.id for r in recorded}) == total
            attempts = Counter(a.task_id for a in await all_rows(store, AttemptRow) if a.task_id.endswith(f"-{round_}"))
            assert set(attempts.values()) == {1}
            assert len({row.id for row in reclaimed}) == len(reclaimed)  # each claimed again at most once


class _Aborted(Exception):
    """What the driver raises, with PostgreSQL's SQLSTATE as asyncpg's SQLAlchemy adapter exposes it."""

    def __init__(self, pgcode: str) -> None:
        super().__init__(f"aborted ({pgcode})")
        self.pgcode = pgcode


def aborted(pgcode: str) -> DBAPIError:
    return DBAPIError("UPDATE hexlabs_tasks ...", None, _Aborted(pgcode))


@pytest.mark.parametrize("pgcode", ["40P01", "40001"])  # deadlock_detected, serialization_failure
async def test_transact_runs_a_transaction_again_after_a_conflict_and_keeps_only_the_last_run(
    store: Store, pgcode: str
) -> None:
    runs = 0

    async def work(session: Any) -> str:
        nonlocal runs
        runs += 1
        session.add(make_row(f"run-{runs}"))
        await session.flush()
        if runs < 3:
            raise aborted(pgcode)
        return "done"

    assert await store.transact(work) == "done"

    assert runs == 3
    assert ids(await all_rows(store, TaskRow)) == ["run-3"]  # the aborted runs left nothing


async def test_transact_passes_other_errors_through_at_once_and_gives_up_after_its_attempts(store: Store) -> None:
    runs = 0

    async def failing(session: Any, error: Exception) -> None:
        nonlocal runs
        runs += 1
        raise error

    with pytest.raises(DBAPIError):
        await store.transact(lambda session: failing(session, aborted("23505")))  # unique_violation: no retry
    assert runs == 1

    runs = 0
    with pytest.raises(DBAPIError):
        await store.transact(lambda session: failing(session, aborted("40P01")))
    assert runs == CONFLICT_ATTEMPTS


async def test_a_finish_run_again_after_a_conflict_gives_its_attempt_and_events_new_ids(store: Store) -> None:
    await seed(store, make_row("t1", due_at=NOW))
    await claim(store, "worker-a")
    attempt, event = make_attempt("t1", 1), EventRow(task_id="t1", type="completed", status="completed", at=NOW)
    attempt.id, event.id = 999_999, 999_999  # left by an earlier run of the transaction that was rolled back

    finished = await store.finish_attempt(task_id="t1", owner="worker-a", attempt=attempt, values=DONE, events=[event])

    assert finished is not None
    [stored] = await store.attempts("t1")
    assert stored.id != 999_999
    assert all(e.id != 999_999 for e in await all_rows(store, EventRow))
