"""Schema migrations: Alembic, driven from code so ``serve`` and ``worker`` upgrade a database in place."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

__all__ = ["alembic_config", "upgrade"]


def alembic_config(url: str) -> Config:
    """An Alembic config for the migrations that ship in this package, pointed at ``url``."""
    config = Config()
    config.set_main_option("script_location", "hexlabs_tasks:_migrations")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` (an async-driver URL) to ``revision``."""
    command.upgrade(alembic_config(url), revision)
