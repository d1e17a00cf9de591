"""``saevit defend-typo``: one sub-command per mode, ``classify`` the default, the earlier spellings kept."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sae_vit.cli import app
from sae_vit.cli.typo import route
from sae_vit.core.errors import SaeVitError

COMMANDS = {"classify", "attack", "eval", "make-assets"}
runner = CliRunner()


@pytest.mark.parametrize("args,routed", [
    (["photo.png"], ["classify", "photo.png"]),
    (["--classes", "cat,dog", "a.png", "b.png"], ["classify", "--classes", "cat,dog", "a.png", "b.png"]),
    (["classify", "attack.png"], ["classify", "attack.png"]),
    (["attack", "photos/", "--out", "o"], ["attack", "photos/", "--out", "o"]),
    (["--eval", "world", "--sae", "a", "--sae", "b"], ["eval", "world", "--sae", "a", "--sae", "b"]),
    (["--sae", "s", "--eval=attacked/"], ["eval", "attacked/", "--sae", "s"]),
    (["--make-assets", "--out", "d"], ["make-assets", "--out", "d"]),
    (["eval", "world"], ["eval", "world"]),
    (["--help"], ["--help"]),
    ([], []),
])
def test_route_makes_the_mode_explicit(args, routed):
    assert route(args, COMMANDS) == routed


@pytest.mark.parametrize("args", [
    ["attack", "x.png", "--eval", "world"],
    ["--eval", "world", "--make-assets"],
    ["make-assets", "--eval", "world"],
    ["--eval", "a", "--eval", "b"],
])
def test_route_refuses_two_modes(args):
    with pytest.raises(SaeVitError, match="exactly one"):
        route(args, COMMANDS)


def test_two_modes_are_one_red_line():
    result = runner.invoke(app, ["defend-typo", "eval", "world", "--make-assets"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: Give exactly one of: image file(s), 'attack IMAGES...', 'eval world|DIR' (--eval), or 'make-assets'."]


@pytest.mark.parametrize("mode,own,foreign", [
    ("classify", "--classes", "--word"),
    ("attack", "--word", "--n-discovery"),
    ("eval", "--n-discovery", "--palette"),
    ("make-assets", "--layers", "--top"),
])
def test_each_mode_shows_only_its_options(mode, own, foreign):
    result = runner.invoke(app, ["defend-typo", mode, "--help"])
    assert result.exit_code == 0, result.output
    assert own in result.output and foreign not in result.output


def test_group_help_names_modes_and_old_spellings():
    result = runner.invoke(app, ["defend-typo", "--help"])
    assert result.exit_code == 0
    for word in ("classify", "attack", "eval", "make-assets", "--eval", "--make-assets"):
        assert word in result.output
