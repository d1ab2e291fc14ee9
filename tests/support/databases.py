"""Throwaway databases for the store tests: PostgreSQL on 127.0.0.1:5432 when it answers, SQLite files always.

A PostgreSQL server counts as available when one of :data:`POSTGRES_USERS` can connect to the maintenance
database ``test`` without a password (trust auth). Each caller gets its own ``hexlabs_test_<hex>`` database,
which it drops (``WITH (FORCE)``) when done.

The helpers are coroutines; :func:`run_in_thread` runs one to completion on a private event loop in a worker
thread, for synchronous (module-scoped) fixtures that must not touch the test's own event loop.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import asyncpg

__all__ = [
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USERS",
    "create_postgres_database",
    "drop_postgres_database",
    "empty_postgres_tables",
    "find_postgres_user",
    "postgres_url",
    "postgres_user",
    "run_in_thread",
]

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USERS = ("postgres", "root")
MAINTENANCE_DATABASE = "test"
DATABASE_PREFIX = "hexlabs_test_"

P = ParamSpec("P")
T = TypeVar("T")


def run_in_thread(function: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``function(*args, **kwargs)`` to completion on a new event loop in a worker thread."""

    async def main() -> T:
        return await function(*args, **kwargs)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db") as pool:
        return pool.submit(lambda: asyncio.run(main())).result()


def postgres_url(user: str, database: str, *, driver: str = "postgresql") -> str:
    """The URL of ``database`` on the test server as ``user`` (no password: trust auth)."""
    return f"{driver}://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"


async def _connect(user: str, database: str, *, timeout: float = 5.0) -> asyncpg.Connection:
    return await asyncpg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, database=database, timeout=timeout)


async def find_postgres_user() -> str | None:
    """The first of :data:`POSTGRES_USERS` that can connect to the maintenance database, or None."""
    for user in POSTGRES_USERS:
        try:
            connection = await _connect(user, MAINTENANCE_DATABASE, timeout=2.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            continue
        await connection.close()
        return user
    return None


@functools.cache
def postgres_user() -> str | None:
    """:func:`find_postgres_user`, asked once per test session."""
    return run_in_thread(find_postgres_user)


async def create_postgres_database(user: str) -> str:
    """Create an empty ``hexlabs_test_<hex>`` database; its name."""
    name = f"{DATABASE_PREFIX}{secrets.token_hex(8)}"
    connection = await _connect(user, MAINTENANCE_DATABASE)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name


async def drop_postgres_database(user: str, name: str) -> None:
    """Drop a database made by :func:`create_postgres_database`, closing whatever is still connected to it."""
    if not name.startswith(DATABASE_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    connection = await _connect(user, MAINTENANCE_DATABASE)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def empty_postgres_tables(user: str, database: str, tables: Iterable[str]) -> None:
    """Delete every row of ``tables`` of ``database`` (faster than TRUNCATE on the few rows tests leave)."""
    statements = "; ".join(f'DELETE FROM "{table}"' for table in tables)
    connection = await _connect(user, database)
    try:
        await connection.execute(statements)
    finally:
        await connection.close()
