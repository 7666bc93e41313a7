"""Progress for terminals and for everything else: rich's bars where the output is a terminal (or a notebook),
plain lines at a steady pace where it is not (CI logs, nohup, a pipe), where rich would print nothing until
the end."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich import get_console
from rich.console import Console
from rich.progress import Progress

__all__ = ["progress_bar", "PlainProgress", "PLAIN_INTERVAL_S"]

PLAIN_INTERVAL_S = 30.0


def progress_bar(*columns: Any, console: Console | None = None, disable: bool = False, transient: bool = False,
                 interval_s: float = PLAIN_INTERVAL_S) -> Progress | "PlainProgress":
    """rich's Progress with these columns on a terminal; a `PlainProgress` with the same calls elsewhere."""
    console = console or get_console()
    if console.is_terminal or console.is_jupyter:
        return Progress(*columns, console=console, disable=disable, transient=transient)
    return PlainProgress(console=console, disable=disable, interval_s=interval_s)


class PlainProgress:
    """The add_task / update / remove_task of rich's Progress, printed as one plain line per task every
    ``interval_s`` seconds (and once when a task completes): ``search: 3/16 2 complete, 1 running (4m10s)``."""

    def __init__(self, *, console: Console, disable: bool = False, interval_s: float = PLAIN_INTERVAL_S) -> None:
        self.console, self.disable, self.interval_s = console, disable, interval_s
        self._tasks: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_id = 0
        self._started = time.monotonic()

    def __enter__(self) -> "PlainProgress":
        if not self.disable:
            self._thread = threading.Thread(target=self._tick, name="wattless-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        with self._lock:
            task_id, self._next_id = self._next_id, self._next_id + 1
            self._tasks[task_id] = {"description": description, "total": total, "completed": completed,
                                    "fields": fields, "done": False}
        return task_id

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, **fields: Any) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return
            if total is not None:
                task["total"] = total
            if completed is not None:
                task["completed"] = completed
            if advance is not None:
                task["completed"] += advance
            if description is not None:
                task["description"] = description
            task["fields"].update(fields)
            finished = task["total"] is not None and task["completed"] >= task["total"] and not task["done"]
            if finished:
                task["done"] = True
        if finished:
            self._say([task])

    def remove_task(self, task_id: int) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                live = [t for t in self._tasks.values() if not t["done"]]
            self._say(live)

    def _say(self, tasks: list[dict[str, Any]]) -> None:
        if self.disable:
            return
        elapsed = int(time.monotonic() - self._started)
        for t in tasks:
            count = f"{t['completed']:g}" + (f"/{t['total']:g}" if t["total"] is not None else "")
            status = t["fields"].get("status") or ""
            line = " ".join(p for p in (f"{t['description']}:", count, status, f"({elapsed // 60}m{elapsed % 60:02d}s)") if p)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
