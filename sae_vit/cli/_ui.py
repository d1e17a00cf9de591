"""What every command shares: the consoles and plain-text printers, the one error printer, input checks,
progress bars and list parsers.

User data (paths, words, messages) is always printed as plain text, never read as rich markup. Nothing heavy is
imported here (``saevit --help`` must not import torch).
"""

from __future__ import annotations

import itertools
import math

from rich.console import Console
from rich.text import Text

from sae_vit.core.errors import SaeVitError

#: Progress, notes and errors go to stderr; results to stdout.
console = Console(stderr=True)
out_console = Console()
#: "using default ..." notes not printed yet: they appear with the command's first output or progress, so a command
#: refused before any work starts prints only its one error line (see :func:`drop_notes`).
_pending: list[str] = []
#: The result document of a command run with ``--json`` (None otherwise): tables and fields are collected here,
#: result lines go to stderr, and the root command prints it as the one JSON document on stdout.
_json: dict | None = None


def json_mode(on: bool | None) -> None:
    """``--json``'s callback (also called with None by the root command to reset before each command)."""
    global _json
    _json = {"tables": [], "messages": []} if on else None


def result(**fields) -> None:
    """Add structured fields to the ``--json`` document (a no-op without ``--json``)."""
    if _json is not None:
        _json.update(fields)


def _plain(value):
    """A JSON-ready value: numpy and torch scalars as Python numbers, paths and anything else as text."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _finite(value.item())
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return str(value)


def _finite(value):
    """``value`` with NaN and infinities as None (null), and every key as text: strict JSON (RFC 8259; jq,
    JavaScript) has no NaN, and a table's missing cell is NaN in pandas."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dump_json() -> None:
    """Print the collected ``--json`` document on stdout, once (then leave JSON mode)."""
    import json
    import sys

    global _json
    if _json is not None:
        doc, _json = _json, None
        sys.stdout.write(json.dumps(_finite(doc), default=_plain, allow_nan=False, indent=1) + "\n")


def error(message: str) -> None:
    """Print one red ``error:`` line; the message is shown as plain text, never read as rich markup."""
    console.print(Text.assemble(("error:", "bold red"), " ", str(message)), highlight=False, soft_wrap=True)


def note(message: str, style: str = "dim") -> None:
    """Print a note on stderr as plain text in ``style`` (after any pending default notes)."""
    flush_notes()
    console.print(Text(str(message), style=style), highlight=False, soft_wrap=True)


def note_default(what: str, value) -> None:
    """Say which default a command uses, once it starts working (:func:`flush_notes`)."""
    _pending.append(f"using default {what}: {value}")


def flush_notes() -> None:
    """Print the pending default notes (the command is past its checks)."""
    while _pending:
        console.print(Text(_pending.pop(0), style="dim"), highlight=False, soft_wrap=True)


def drop_notes() -> None:
    """Forget the pending default notes (the command was refused: its one error line is all it prints)."""
    _pending.clear()


def say(message: str) -> None:
    """Print one result line on stdout as plain text (paths, names and words are never read as rich markup); under
    ``--json`` it goes to stderr and into the document's ``messages``."""
    if _json is not None:
        _json["messages"].append(str(message))
        return note(message, "")
    flush_notes()
    out_console.print(Text(str(message)), highlight=False, soft_wrap=True)


def print_table(title, columns, rows, left=(), styles=(), **column_kw) -> None:
    """Print a table on stdout, its title and cells as plain text (a user's path or word such as ``a[b]`` is
    shown as written): ``columns`` are headers, right-aligned unless named in ``left``; ``rows`` are sequences
    of cells; ``styles`` is a rich style (or None) per row; ``column_kw`` go to every column.

    No cell is cut short: in a terminal too narrow for the table a cell folds onto more lines, and into a file
    or a pipe (a log) the table is printed at its full width."""
    flush_notes()
    if _json is not None:
        _json["tables"].append({"title": str(title), "rows": [dict(zip(columns, row, strict=False)) for row in rows]})
        return
    from rich.table import Table

    table = Table(title=Text(str(title), style="table.title"))
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right", **{"overflow": "fold", **column_kw})
    for row, style in itertools.zip_longest(rows, styles):
        table.add_row(*(Text(str(c)) for c in row), style=style)
    if not out_console.is_terminal:
        from rich.measure import Measurement

        full = Measurement.get(out_console, out_console.options.update_width(10_000), table).maximum
        if full > out_console.width:  # a console prints no wider than its width: one as wide as the table
            return Console(width=full, highlight=False).print(table)
    out_console.print(table)


def check_inputs(**paths) -> None:
    """Raise for the first given input path that does not exist, named by its option (``text_embeddings`` ->
    ``--text-embeddings``). Commands call this before the library looks at their outputs, so a typo in an input
    is reported rather than "already exists; pass --overwrite"."""
    from pathlib import Path

    for option, path in paths.items():
        if path is not None and not Path(path).exists():
            raise SaeVitError(f"--{option.replace('_', '-')} {path} does not exist; check the path.")


def check_images(images, world: str | None) -> None:
    """``--images`` / ``--world``: at most one, an existing path or a known synthetic-world task."""
    from sae_vit.world.scenes import TASKS

    if images is not None and world is not None:
        raise SaeVitError("Pass either --images or --world, not both.")
    if world is not None and world not in TASKS:
        raise SaeVitError(f"Unknown --world {world!r}; use one of: {', '.join(TASKS)}.")
    check_inputs(images=images)


class LazyProgress:
    """A rich progress bar that appears on the first update, so errors raised before any work starts
    print as one clean line."""

    def __init__(self, label: str, *fields: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn("{task.fields[" + f + "]}", markup=False) for f in fields]
        self.bar = Progress(*columns, TimeRemainingColumn(), console=console)
        self.task = self.bar.add_task(label, total=None, **{f: "" for f in fields})

    def update(self, **kwargs) -> None:
        flush_notes()
        self.bar.start()  # a no-op once started
        self.bar.update(self.task, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar.live.is_started:  # stop() would print a blank line for a bar never shown
            self.bar.stop()


def parse_numbers(text: str | None, option: str, kind: type = int) -> list | None:
    """``"3,17"`` -> [3, 17] (``kind=float``: [3.0, 17.0]; None stays None); anything else is one clear error
    naming ``option``."""
    if text is None:
        return None
    import math

    what = "comma-separated integers" if kind is int else "comma-separated finite numbers"
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise SaeVitError(f"Could not read {option} {text!r}; give {what} like 3,17.") from exc
    if not all(math.isfinite(v) for v in values):
        raise SaeVitError(f"Could not read {option} {text!r}; give {what} like 3,17 (no nan or inf).")
    return values


def check_number(value, option: str, *, minimum: float = 0.0, strict: bool = False) -> None:
    """Raise one clear error unless ``value`` (None passes) is a finite number >= ``minimum`` (> with ``strict``):
    NaN, infinities and negative values are refused where they enter, naming ``option``."""
    import math

    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"{'greater than' if strict else 'at least'} {minimum:g}"
        raise SaeVitError(f"{option} must be a finite number {bound} (got {value!r}).")


def parse_layers(text: str | None) -> list[int] | str | None:
    """``--layers``: ``"4,8"`` -> [4, 8] (sorted, unique); ``"all"`` stays ``"all"`` (every block, resolved by the
    library once the model is known); None (not given) stays None (the command's default)."""
    if text is None or text.strip() == "all":
        return None if text is None else "all"
    layers = parse_numbers(text, "--layers")
    if not layers or any(layer < 0 for layer in layers):
        raise SaeVitError(f"Could not read --layers {text!r}; give 0-based blocks like 4,8 or 'all'.")
    return sorted(set(layers))


def parse_names(text: str | None) -> list[str] | None:
    """``"cls,patches"`` -> ["cls", "patches"] (None stays None)."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]
