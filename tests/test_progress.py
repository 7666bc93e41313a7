"""Progress where the output is not a terminal: plain lines at a steady pace, not silence until the end."""

from __future__ import annotations

import io
import time

from rich.console import Console
from rich.progress import Progress

from wattless.progress import PlainProgress, progress_bar


def test_a_pipe_gets_plain_lines_at_a_steady_pace():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with progress_bar(console=console, interval_s=0.05) as bar:
        assert isinstance(bar, PlainProgress)
        task = bar.add_task("search", total=4, status="")
        bar.update(task, completed=1, status="1 complete, 1 running")
        time.sleep(0.3)
        lines = out.getvalue().splitlines()
        assert len(lines) >= 2 and all(ln.startswith("search: 1/4 1 complete, 1 running (") for ln in lines)
        bar.update(task, advance=3, status="done")
    assert out.getvalue().splitlines()[-1].startswith("search: 4/4 done")


def test_a_terminal_gets_rich_bars_and_disabled_prints_nothing():
    assert isinstance(progress_bar(console=Console(file=io.StringIO(), force_terminal=True)), Progress)
    out = io.StringIO()
    with progress_bar(console=Console(file=out, force_terminal=False), disable=True, interval_s=0.01) as bar:
        bar.update(bar.add_task("training", total=2, status=""), advance=2)
        time.sleep(0.05)
    assert out.getvalue() == ""
