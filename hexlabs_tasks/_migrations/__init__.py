"""Alembic migrations of the task store (run through ``hexlabs_tasks._migrate.upgrade``)."""
