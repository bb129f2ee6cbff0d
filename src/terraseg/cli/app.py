"""The Typer application, consoles and the user-error wrapper shared by every sub-command."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from terraseg.errors import TerrasegError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="terraseg",
    help="Semantic segmentation of camera images and LiDAR point clouds off-road.\n\n"
         "Example: terraseg ontology show goose",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

console = Console()
err_console = Console(stderr=True)


class _WarningLines(logging.Handler):
    """The library's warnings (``terraseg.*`` loggers) as one ``warning: ...`` line each on
    stderr, without a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not hide the warning
            text = str(record.msg)
        err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


def show_warnings() -> None:
    """Print the library's warnings as ``warning:`` lines on stderr (installed once)."""
    logger = logging.getLogger("terraseg")
    if not any(isinstance(h, _WarningLines) for h in logger.handlers):
        logger.addHandler(_WarningLines())


def user_errors(fn: F) -> F:
    """Turn :class:`TerrasegError` into one ``error:`` line on stderr and exit status 1; print the
    library's warnings as ``warning:`` lines (:func:`show_warnings`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        show_warnings()
        try:
            return fn(*args, **kwargs)
        except TerrasegError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def swatch(rgb: tuple[int, int, int]) -> Text:
    """A small block of colour for rich tables."""
    return Text("    ", style=f"on rgb({rgb[0]},{rgb[1]},{rgb[2]})")
