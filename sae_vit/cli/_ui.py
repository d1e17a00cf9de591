"""What every command shares: the consoles, the one error printer, progress bars and list parsers.

Nothing heavy is imported here (``saevit --help`` must not import torch).
"""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.text import Text

from sae_vit.core.errors import SaeVitError

#: Progress, notes and errors go to stderr; results to stdout.
console = Console(stderr=True)
out_console = Console()
state = {"debug": False}


def error(message: str) -> None:
    """Print one red ``error:`` line; the message is shown as plain text, never read as rich markup."""
    console.print(Text.assemble(("error:", "bold red"), " ", str(message)), highlight=False, soft_wrap=True)


def note(message: str, style: str = "dim") -> None:
    """Print a note on stderr as plain text in ``style``."""
    console.print(Text(str(message), style=style), highlight=False, soft_wrap=True)


def note_default(what: str, value) -> None:
    note(f"using default {what}: {value}")


def guard(fn):
    """Turn a :class:`SaeVitError` raised by a command into one red line and exit code 2."""

    @functools.wraps(fn)
    def run(*a, **kw):
        try:
            return fn(*a, **kw)
        except SaeVitError as exc:
            if state["debug"]:
                raise
            error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            note("interrupted; re-run the same command to resume where it stopped.", "yellow")
            raise typer.Exit(130) from None

    return run


class LazyProgress:
    """A rich progress bar that appears on the first update, so errors raised before any work starts
    print as one clean line."""

    def __init__(self, label: str, *fields: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn("{task.fields[" + f + "]}") for f in fields]
        self.bar = Progress(*columns, TimeRemainingColumn(), console=console)
        self.task = self.bar.add_task(label, total=None, **{f: "" for f in fields})
        self.started = False

    def update(self, **kwargs) -> None:
        if not self.started:
            self.bar.start()
            self.started = True
        self.bar.update(self.task, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.bar.stop()


def parse_ints(text: str | None, option: str) -> list[int] | None:
    """``"3,17"`` -> [3, 17] (None stays None); anything else is one clear error naming ``option``."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise SaeVitError(f"Could not read {option} {text!r}; give comma-separated integers like 3,17.") from exc


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """``"0,50,150"`` -> (0.0, 50.0, 150.0); anything else is one clear error naming ``option``."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise SaeVitError(f"Could not read {option} {text!r}; give comma-separated numbers like 0,50,150.") from exc


def parse_layers(text: str | None) -> list[int] | str | None:
    """``--layers``: ``"4,8"`` -> [4, 8] (sorted, unique); ``"all"`` stays ``"all"`` (every block, resolved by the
    library once the model is known); None (not given) stays None (the command's default)."""
    if text is None or text.strip() == "all":
        return None if text is None else "all"
    layers = parse_ints(text, "--layers")
    if not layers or any(layer < 0 for layer in layers):
        raise SaeVitError(f"Could not read --layers {text!r}; give 0-based blocks like 4,8 or 'all'.")
    return sorted(set(layers))


def parse_names(text: str) -> list[str]:
    """``"cls,patches"`` -> ["cls", "patches"]."""
    return [part.strip() for part in text.split(",") if part.strip()]
