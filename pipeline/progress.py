"""Progress of long commands, the same way everywhere: in a terminal a rich bar with rate and ETA, elsewhere (logs,
batch jobs, CI) plain lines with the same numbers, at most one every `every` seconds plus the last.

    with Progress("evaluating", total=len(images), unit="image") as progress:
        for image in images:
            ...
            progress.advance(note=image.name)

`Phase` is the same for work without a count (reading a checkpoint): a spinner with the elapsed time in a terminal,
a start and a done line elsewhere. The trainer's bar (`pipeline.trainer`) adds the loss and keeps its own columns.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Counts `total` items of work. `every`: seconds between plain lines (0: a line per item)."""

    def __init__(self, description: str, total: int, unit: str = "it", console: Console | None = None,
                 every: float = 10.0, enabled: bool = True):
        self.description, self.total, self.unit, self.every = description, max(int(total), 0), unit, every
        self.console = console or Console()
        self.enabled = enabled
        self.terminal = enabled and self.console.is_terminal
        self.done = 0
        self._bar = self._task = None
        self._started = self._last_line = 0.0

    def __enter__(self) -> "Progress":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "Progress":
        """Start the clock (and the bar); `with Progress(...)` calls it, and `close` at the end."""
        self._started = self._last_line = time.perf_counter()
        if self.terminal:
            self._bar = RichProgress(TextColumn(self.description), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), console=self.console, transient=False)
            self._task = self._bar.add_task(self.description, total=self.total, rate="")
            self._bar.start()
        return self

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def rate(self) -> str:
        """The mean rate so far, in the unit that reads best (items per second or seconds per item)."""
        elapsed = time.perf_counter() - self._started
        if not self.done or elapsed <= 0:
            return "-"
        per_second = self.done / elapsed
        return f"{per_second:.2f} {self.unit}/s" if per_second >= 1 else f"{1 / per_second:.2f} s/{self.unit}"

    def eta_seconds(self) -> float:
        elapsed = time.perf_counter() - self._started
        return elapsed / self.done * (self.total - self.done) if self.done else float("nan")

    def advance(self, steps: int = 1, note: str = "") -> None:
        """`steps` more items done; `note` names the last one in plain lines."""
        self.update(self.done + steps, note)

    def update(self, done: int, note: str = "", total: int | None = None) -> None:
        """`done` items so far (and the total, when only the work itself knows it)."""
        if total is not None:
            self.total = int(total)
        self.done = min(int(done), self.total) if self.total else int(done)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total, rate=self.rate())
            return
        now = time.perf_counter()
        if self.done < self.total and now - self._last_line < self.every:
            return
        self._last_line = now
        eta = self.eta_seconds()
        self.console.print(f"{self.description} {self.done}/{self.total}{f' ({note})' if note else ''} "
                           f"{self.rate()}, elapsed {_duration(now - self._started)}, "
                           f"ETA {_duration(eta) if eta == eta else '-'}", highlight=False, soft_wrap=True)


class Phase:
    """One piece of work without a count: a spinner with the elapsed time in a terminal, a start and a done line
    (with its duration) elsewhere."""

    def __init__(self, description: str, console: Console | None = None, enabled: bool = True):
        self.description, self.console, self.enabled = description, console or Console(), enabled
        self._status = None
        self._started = 0.0

    def __enter__(self) -> "Phase":
        self._started = time.perf_counter()
        if not self.enabled:
            return self
        if self.console.is_terminal:
            self._status = RichProgress(SpinnerColumn(), TextColumn(self.description), TimeElapsedColumn(),
                                        console=self.console, transient=True)
            self._status.add_task(self.description, total=None)
            self._status.start()
        else:
            self.console.print(f"{self.description} ...", highlight=False, soft_wrap=True)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._status is not None:
            self._status.stop()
        if self.enabled and exc_type is None:
            self.console.print(f"{self.description}: done in {time.perf_counter() - self._started:.1f} s",
                               highlight=False, soft_wrap=True)
