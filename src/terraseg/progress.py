"""Progress bars for long work (rich), shared by the library and the CLI."""

from __future__ import annotations

from types import TracebackType


class ProgressBar:
    """A one-task rich progress bar; a no-op when ``enabled`` is False.

    Use as a context manager::

        with ProgressBar(len(files), "evaluating", enabled=True) as bar:
            for f in files:
                ...
                bar.advance()
    """

    def __init__(self, total: int | None, label: str, enabled: bool = True) -> None:
        self._p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeRemainingColumn(), transient=False)
            self._task = self._p.add_task(label, total=total)

    def __enter__(self) -> ProgressBar:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._p is not None:
            self._p.stop()

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)
