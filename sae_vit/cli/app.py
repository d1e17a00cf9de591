"""The ``saevit`` Typer app: global options, and every command mounted from its module.

Commands parse arguments, call one library function and render the result with rich. Nothing heavy is imported
at start-up (``saevit --help`` must not import torch): every command imports what it needs inside its body. A
:class:`~sae_vit.core.errors.SaeVitError` becomes one red line and exit code 2; ``--debug`` shows the traceback.
Help texts are shown as written (``rich_markup_mode=None``): ``owner/repo[/path]`` is not rich markup.
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from sae_vit.cli import cache, demo, hub, inspect, sparsity, steer, suppress, typo, world
from sae_vit.cli._ui import drop_notes, dump_json, error, flush_notes, json_mode, note, out_console
from sae_vit.core.errors import SaeVitError

#: Click's UsageError as the Click that Typer runs on raises it (Typer vendors its own Click; BadParameter, which Typer
#: exports, derives from it).
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _usage_error(exc) -> typer.Exit:
    """A command-line mistake Click found (unknown option, value out of range, missing argument) as one red line
    naming the command's --help, instead of Click's usage block; exit code 2 as Click's own."""
    json_mode(None)
    drop_notes()
    where = exc.ctx.command_path if exc.ctx is not None else "saevit"
    error(" ".join(f"{exc.format_message()} (see `{where} --help`)".split()))
    return typer.Exit(2)


class _Root(TyperGroup):
    """The ``saevit`` group: a :class:`SaeVitError` raised below it (by a command, or by defend-typo's
    argument routing) prints one red line and exits with code 2, or shows its traceback under ``--debug``; so
    does a command-line mistake Click finds (:func:`_usage_error`). A command run with ``--json`` has its
    collected result printed here, once, as the one document on stdout."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as exc:
            raise _usage_error(exc) from None

    def invoke(self, ctx):
        json_mode(None)
        drop_notes()
        try:
            value = super().invoke(ctx)
            flush_notes()
            dump_json()
            return value
        except UsageError as exc:
            if ctx.params.get("debug"):
                raise
            raise _usage_error(exc) from None
        except SaeVitError as exc:
            json_mode(None)
            drop_notes()
            if ctx.params.get("debug"):
                raise
            error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            note("interrupted; re-run the same command to resume where it stopped.", "yellow")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Root,
    name="saevit",
    help="Sparse autoencoders on CLIP's vision transformer: cache activations, train SAEs, analyse sparsity.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from sae_vit import __version__

        out_console.print(f"sae-vit {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Global options (:class:`_Root` reads ``--debug``)."""


COMMANDS = {
    "cache": cache.cache_cmd,
    "train": cache.train_cmd,
    "sparsity": sparsity.sparsity_cmd,
    "steer-score": steer.steer_score_cmd,
    "inspect": inspect.inspect_cmd,
    "suppress": suppress.suppress_cmd,
    "demo": demo.demo_cmd,
    "push": hub.push_cmd,
    "pull": hub.pull_cmd,
    "list": hub.list_cmd,
    "convert": hub.convert_cmd,
    "export": hub.export_cmd,
}
for _name, _fn in COMMANDS.items():
    app.command(_name)(_fn)
app.add_typer(typo.typo_app, name="defend-typo")
app.add_typer(world.world_app, name="world")


def main() -> None:
    """Console-script entry point."""
    app()
