"""The Prefect flow of hexlabs-tasks (installed as ``hexlabs_tasks.flows``)."""
