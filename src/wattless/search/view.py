"""The live view of the primary worker: progress bars of the baselines, the study's trials and the running
trial's epochs."""

from __future__ import annotations

from collections.abc import Callable

from optuna.trial import FrozenTrial, TrialState

from wattless.search.budget import counted

__all__ = ["View"]


class View:
    """Progress bars of the primary worker: baselines, trials of the whole study, the running trial's epochs."""

    def __init__(self, enabled: bool, total: int | None = None, console=None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        from wattless.progress import progress_bar

        self.total = total
        self.bar = progress_bar(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(), disable=not enabled,
                                console=console)
        self._search = self._trial = None

    def __enter__(self) -> "View":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def stage(self, description: str, total: int) -> Callable[[str | None], None]:
        """A step function: stage(name) marks one step done; stage(None) completes the stage."""
        task = self.bar.add_task(description, total=total, status="")

        def step(status: str | None) -> None:
            if status is None:
                self.bar.update(task, completed=total, status="done")
            else:
                self.bar.update(task, advance=1, status=status)

        return step

    def waiting(self, procs: list) -> None:
        if any(p.poll() is None for p in procs) and self._search is not None:
            self.bar.update(self._search, status="waiting for the other workers' last trials")

    def progress(self, trials: list[FrozenTrial]) -> None:
        done = sum(1 for t in trials if counted(t))
        states = f"{sum(t.state == TrialState.COMPLETE for t in trials)} complete, " \
                 f"{sum(t.state == TrialState.PRUNED for t in trials)} pruned, " \
                 f"{sum(t.state == TrialState.RUNNING for t in trials)} running"
        if self._search is None:
            self._search = self.bar.add_task("search", total=self.total, status=states)
        self.bar.update(self._search, completed=done, status=states)

    def trial(self, number: int, epochs: int, label: str) -> None:
        if self._trial is not None:
            self.bar.remove_task(self._trial)
        self._trial = self.bar.add_task(f"trial {number}", total=epochs, status=label)

    def epoch(self, epoch: int, status: str) -> None:
        if self._trial is not None:
            self.bar.update(self._trial, completed=epoch, status=status)

    def trial_done(self) -> None:
        if self._trial is not None:
            self.bar.remove_task(self._trial)
            self._trial = None
