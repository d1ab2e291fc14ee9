"""``python -m hexlabs_tasks``: the same as the ``hexlabs-tasks`` command."""

from hexlabs_tasks.cli import main

if __name__ == "__main__":
    main(prog_name="hexlabs-tasks")
