"""The ``saevit`` command line (Typer): parsing, rich output and exit codes; no library logic."""

from sae_vit.cli.app import app, main

__all__ = ["app", "main"]
