"""Summarise py-spy raw (collapsed) profiles: where the samples go, by own time and by frames of interest.

python bench/profile_summary.py WORKDIR/profiles/*.txt
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path


def summarise(path: Path, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \((.*?)/(?:site-packages|lib/python3\.11)/", " (", f) for f in stack.split(";")]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    lines = [f"## {path.name}: {total} samples"]
    lines.append("own time:")
    lines += [f"  {100 * n / total:5.1f}%  {f[:160]}" for f, n in own.most_common(top)] if total else []
    lines.append("inclusive (hexlabs_tasks, sqlalchemy, prefect server, httpx frames):")
    keep = [
        (f, n)
        for f, n in inclusive.most_common(400)
        if any(
            k in f
            for k in ("hexlabs_tasks", "sqlalchemy/orm", "prefect/server", "httpx/_client", "aiosqlite", "asyncpg")
        )
    ]
    lines += [f"  {100 * n / total:5.1f}%  {f[:160]}" for f, n in keep[:top]] if total else []
    return "\n".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(summarise(Path(name)))
        print()
