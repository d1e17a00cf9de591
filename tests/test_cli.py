"""The command line: exit codes, one-line errors without tracebacks, and the cache -> train -> sparsity path."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sae_vit.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output  # stdout and stderr together


def assert_user_error(args, fragment):
    code, text = run(*args)
    assert code == 2, text
    assert "Traceback" not in text
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("using default")]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    assert fragment in text, text


def test_help_does_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from sae_vit.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_help_lists_commands():
    code, text = run("--help")
    assert code == 0
    for name in ("cache", "train", "sparsity"):
        assert name in text


@pytest.fixture
def cli_cache(tiny_vit, image_dir, tmp_path):
    from tests.conftest import write_images

    write_images(image_dir / "more", 15, seed=5)  # 25 images: one is held out for evaluation
    out = tmp_path / "cache"
    code, text = run("cache", "--images", image_dir, "--model", tiny_vit[0], "--weights", tiny_vit[1],
                     "--layers", "1,3", "--out", out, "--images-per-shard", "4")
    assert code == 0, text
    assert "cached 25 images" in text
    return out


def test_cache_errors(tiny_vit, image_dir, tmp_path, cli_cache):
    w = ["--model", tiny_vit[0], "--weights", tiny_vit[1]]
    assert_user_error(["cache", "--images", tmp_path / "missing", *w, "--out", tmp_path / "o1"], "does not exist")
    (tmp_path / "empty").mkdir()
    assert_user_error(["cache", "--images", tmp_path / "empty", *w, "--out", tmp_path / "o2"], "No images found")
    assert_user_error(["cache", "--images", image_dir, *w, "--layers", "9", "--out", tmp_path / "o3"],
                      "out of range")
    assert_user_error(["cache", "--images", image_dir, "--model", "vit_nonexistent_x", "--out", tmp_path / "o4"],
                      "Unknown model")
    # the same finished cache again is kept (re-running the quickstart); other settings need --overwrite
    code, text = run("cache", "--images", image_dir, *w, "--layers", "1,3", "--out", cli_cache, "--images-per-shard", "4")
    assert code == 0 and "kept as it is" in text, text
    assert_user_error(["cache", "--images", image_dir, *w, "--layers", "1", "--out", cli_cache,
                       "--images-per-shard", "4"], "--overwrite")
    assert_user_error(["cache", "--images", image_dir, *w, "--layers", "x", "--out", tmp_path / "o5"], "--layers")


def test_debug_shows_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "sparsity", str(tmp_path / "nope.safetensors")])
    assert result.exit_code != 0 and result.exception is not None


def test_train_and_sparsity_errors(cli_cache, tiny_vit, image_dir, tmp_path):
    assert_user_error(["train", "--cache", cli_cache, "--layer", "2", "--tokens", "cls"], "has no layer 2")
    assert_user_error(["train", "--cache", tmp_path / "nocache", "--layer", "1"], "not an activation cache")
    small = tmp_path / "small"
    from sae_vit.core.backbone import load_backbone
    from sae_vit.io.cache import write_cache
    from sae_vit.io.images import folder_source

    write_cache(load_backbone("test_vit", tiny_vit[1]), folder_source(image_dir / "a"), small, [1])
    assert_user_error(["train", "--cache", small, "--layer", "1"], "at least 20 images")
    assert_user_error(["train", "--cache", cli_cache, "--layer", "1", "--tokens", "some"], "token selection")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    assert_user_error(["sparsity", bad, "--out", tmp_path / "s.csv"], "not a readable .safetensors")
    import torch
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))
    assert_user_error(["sparsity", foreign, "--out", tmp_path / "s.csv"], "not an sae-vit checkpoint")


def test_cache_train_sparsity_end_to_end(cli_cache, tmp_path):
    sae_path = tmp_path / "saes" / "l3_patches.safetensors"
    code, text = run("train", "--cache", cli_cache, "--layer", "3", "--tokens", "patches", "--out", sae_path,
                     "--n-tokens", "20000", "--batch-size", "256", "--expansion", "4", "--k", "8")
    assert code == 0, text
    assert sae_path.is_file() and "FVU" in text
    assert_user_error(["train", "--cache", cli_cache, "--layer", "3", "--tokens", "patches", "--out", sae_path,
                       "--n-tokens", "2000"], "--overwrite")
    code, text = run("train", "--cache", cli_cache, "--layer", "1", "--tokens", "cls", "--out",
                     tmp_path / "saes" / "l1_cls.safetensors", "--n-tokens", "2000", "--expansion", "2", "--k", "4")
    assert code == 0, text
    csv = tmp_path / "sparsity.csv"
    code, text = run("sparsity", tmp_path / "saes", "--cache", cli_cache, "--out", csv)
    assert code == 0, text
    import pandas as pd

    df = pd.read_csv(csv)
    assert list(df["layer"]) == [1, 3] and list(df["tokens"]) == ["cls", "patches"]
    assert (df["evaluated_on"] == "cache").all()
    assert df.loc[1, "l0"] <= 8 + 1e-6 and 0 <= df.loc[1, "fvu"] < 1.0
    assert csv.with_suffix(".png").is_file()
    # a derived table: a re-run regenerates it (no --overwrite needed)
    code, text = run("sparsity", tmp_path / "saes", "--cache", cli_cache, "--out", csv)
    assert code == 0, text
    assert pd.read_csv(csv).equals(df)


def test_world_subcommand_errors_are_one_line(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    assert_user_error(["world", "export", "--task", "shapes", "--out", tmp_path / "full", "--n", "4"], "not empty")
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"


def command_paths(typer_app, prefix=()):
    """Every command and sub-command of a Typer app, as the words that name it on the command line."""
    for info in typer_app.registered_commands:
        yield (*prefix, info.name or info.callback.__name__.replace("_", "-"))
    for group in typer_app.registered_groups:
        name = group.name or group.typer_instance.info.name
        yield (*prefix, name)
        yield from command_paths(group.typer_instance, (*prefix, name))


@pytest.mark.parametrize("words", sorted(command_paths(app)), ids=" ".join)
def test_every_command_help_exits_0(words):
    code, text = run(*words, "--help")
    assert code == 0, text
    assert "Usage:" in text
    if words == ("pull",):  # help text that looks like rich markup is shown as written
        assert "owner/repo[/path][@revision]" in text


def test_help_walk_covers_sub_commands():
    words = set(command_paths(app))
    assert {("world", "export"), ("defend-typo", "classify"), ("defend-typo", "attack"), ("pull",)} <= words


def test_train_lr_auto_and_bad_lr(cli_cache, tmp_path):
    out = tmp_path / "auto.safetensors"
    code, text = run("train", "--cache", cli_cache, "--layer", "1", "--tokens", "cls", "--out", out, "--lr", "auto",
                     "--n-tokens", "2000", "--expansion", "2", "--k", "4")
    assert code == 0, text
    from sae_vit.core.sae import SAE

    sae = SAE.load(out)
    assert sae.cfg.d_sae == 128  # expansion 2 x width 64
    recipe = sae.cfg.training["recipe"]
    # the auto rule (core.train.resolve): scaled with d_sae, d_in and the batch actually used
    expected = 1.75e-3 * (2**14 / 128) ** 0.5 * (768 / 64) ** 0.5 * (recipe["batch_size"] / 4096) ** 0.5
    assert recipe["lr"] == pytest.approx(expected)
    assert_user_error(["train", "--cache", cli_cache, "--layer", "1", "--out", tmp_path / "x.safetensors",
                       "--lr", "fast"], "--lr")
    assert_user_error(["train", "--cache", cli_cache, "--layer", "1", "--out", tmp_path / "x.safetensors",
                       "--lr", "-1"], "--lr")


def test_user_paths_are_printed_as_written(tmp_path):
    """A path such as ``run[bold]1[/bold]`` is data, never rich markup: results and errors show it verbatim."""
    from sae_vit.core.sae import SAE, SAEConfig

    folder = tmp_path / "run[bold]1[/bold]"
    sae = SAE(SAEConfig(d_in=8, d_sae=16, k=2, model="toy", layer=1)).save(folder / "sae.safetensors")
    code, text = run("sparsity", sae, "--out", folder / "s.csv", "--no-plot")
    assert code == 0, text
    assert f"table -> {folder / 's.csv'}" in text
    assert_user_error(["sparsity", folder / "[red]missing.safetensors"], "[red]missing.safetensors")


WIDE = ("from sae_vit.cli._ui import print_table; cols = [f'column number {i}' for i in range(10)]; "
        "print_table('wide', cols, [[f'value {i}.0123456' for i in range(10)]])")


def test_a_wide_table_keeps_every_cell_in_a_log_and_in_a_narrow_terminal(monkeypatch):
    piped = subprocess.run([sys.executable, "-c", WIDE], capture_output=True, text=True, check=True,
                           env={"PATH": "", "COLUMNS": "80"}).stdout  # into a pipe, as in `saevit demo > log`
    assert all(f"value {i}.0123456" in piped and f"column number {i}" in piped for i in range(10)), piped
    assert max(map(len, piped.splitlines())) > 80

    import io

    from rich.console import Console

    from sae_vit.cli import _ui

    screen = io.StringIO()
    monkeypatch.setattr(_ui, "out_console", Console(file=screen, force_terminal=True, width=80, color_system=None))
    exec(WIDE)
    shown = screen.getvalue()
    assert "…" not in shown and max(map(len, shown.splitlines())) <= 80  # folded onto more lines, not cut short
    text = "wide" + "".join(f"column number {i}value {i}.0123456" for i in range(10))
    kept = sorted(c for c in shown if c.isascii() and not c.isspace())  # the box is drawn in non-ASCII lines
    assert kept == sorted(c for c in text if not c.isspace()), shown
