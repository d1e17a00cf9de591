"""``saevit demo``: a reduced run of every step writes report.html from its own numbers; a re-run keeps the demo's
matching cache and SAEs and regenerates the rest; ``overwrite`` removes only the demo's own files."""

from __future__ import annotations

import json
import re

import pytest

from sae_vit.core.errors import SaeVitError
from sae_vit.pipeline.demo import DemoConfig, run_demo

#: Every step, at sizes a test can afford.
REDUCED = DemoConfig(n_images=80, layers=(2, 8), tokens=("cls", "patches", "all"), n_tokens=20_000,
                     cls_images=200, relu_n_tokens=10_000, steer_features=8, steer_images=4, suppress_images=80, suppress_n_features=(2, 8),
                     typo_images=24, inspect_features=6, inspect_images=32, inspect_top_images=3)
#: Only the expensive products (cache and SAEs) and the page.
MINIMAL = DemoConfig(n_images=80, layers=(2,), tokens=("cls",), n_tokens=20_000, cls_images=120,
                     relu_n_tokens=5_000, steer_features=0,
                     suppress_images=0, typo_images=0, inspect_features=0)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def test_reduced_demo_runs_every_step_and_reports_its_numbers(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, REDUCED)
    assert list(result.timings) == ["cache", "train", "steer", "suppress", "typo", "inspect", "report"]
    r = json.loads((out / "demo_results.json").read_text())
    assert r["suppress"]["n_images"] == {"train": 80, "val": 80, "test": 80}
    assert {x["method"] for x in r["suppress"]["table"]} == {"none", "sae", "random", "random_rate", "random_act", "projection"}
    assert r["typo"]["n_images"] == 24 and r["typo"]["layer"] == 2  # the shipped defence
    metrics = r["typo"]["metrics"]
    assert metrics["none"]["asr"] > metrics["sae"]["asr"]  # the shipped defence cuts the attack's success
    assert r["inspect"]["n_features"] == 6 and (out / r["inspect"]["index"]).is_file()
    text = result.report.read_text()
    for section in ("sparsity", "steer", "suppress", "typo"):
        assert f"id={section}>" in text
    zs = {x["method"]: x for x in r["suppress"]["table"] if x["eval"] == "zero_shot"}
    assert f"from {_pct(zs['none']['test_worst'])} to {_pct(zs['sae']['test_worst'])}" in text
    assert f"from {_pct(metrics['none']['attacked'])} to {_pct(metrics['sae']['attacked'])}" in text
    assert "10.5 %" in text  # the paper's share of steerable features, beside the toy's
    _check_sparsity(out, r["sparsity"], text)
    srcs = re.findall(r"<img src='([^']*)'", text)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    assert "http://" not in text and "https://" not in text


def _check_sparsity(out, sp, text):
    """ReLU+L1 SAEs per layer x {cls, patches} are trained, measured (CLS on the CLS cache's held-out tokens) and
    judged with their bootstrap intervals; rows on too few held-out tokens are flagged, in the results and page."""
    relu = [x for x in sp["rows"] if x["architecture"] == "relu"]
    assert sorted((x["layer"], x["tokens"]) for x in relu) == [(2, "cls"), (2, "patches"), (8, "cls"), (8, "patches")]
    assert all((out / "saes_relu" / f"layer_{x['layer']:.0f}" / x["tokens"] / "sae.safetensors").is_file() for x in relu)
    assert all(x["l0"] is not None and x["l1_coefficient"] == REDUCED.relu_l1 for x in relu)
    cls = [x for x in sp["rows"] if x["tokens"] == "cls"]
    assert all(x["n_eval_tokens"] == REDUCED.cls_images // 20 for x in cls)  # the CLS cache's held-out images
    assert all(x["reliable"] is (x["n_eval_tokens"] >= sp["min_eval_tokens"]) for x in sp["rows"])
    assert not any(x["reliable"] for x in cls) and "(few: unreliable)" in text
    assert [c["layer"] for c in sp["patches_vs_cls"]] == [2, 8] and sp["cls_depth"]["last"] == 8
    for c in [*sp["patches_vs_cls"], sp["cls_depth"]]:
        assert c["lo"] <= c["ratio"] <= c["hi"] and isinstance(c["holds"], bool)
        assert f"{c['lo']:.2f}–{c['hi']:.2f}" in text
    assert f"ReLU+L1, L1 = {REDUCED.relu_l1:g}" in text and "L0 is k by" in text
    for x in relu:
        assert f"<td>{x['l0']:.1f}</td>" in text


def _mtimes(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_rerun_keeps_cache_and_saes_and_regenerates_the_rest(tmp_path):
    out = tmp_path / "demo"
    run_demo(out, MINIMAL)
    before = _mtimes(out)
    run_demo(out, MINIMAL)  # the same command again: no error
    after = _mtimes(out)
    kept = [k for k in before if k.startswith(("cache/", "saes/"))]
    assert "saes/layer_2/cls/sae.safetensors" in kept and "cache/manifest.json" in kept
    assert all(after[k] == before[k] for k in kept)
    assert after["report.html"] != before["report.html"] and after["sparsity.csv"] != before["sparsity.csv"]


def test_overwrite_removes_only_the_demos_own_files(tmp_path):
    out = tmp_path / "demo"
    run_demo(out, MINIMAL)
    mine = [out / "notes.txt", out / "saes" / "layer_2" / "cls" / "keep.md"]
    for p in mine:
        p.write_text("the user's")
    in_cache = out / "cache" / "my_notes.txt"  # the cache's writer never replaces a folder holding a user's file
    in_cache.write_text("the user's")
    before = _mtimes(out)
    with pytest.raises(SaeVitError, match="my_notes.txt, which sae-vit did not write"):
        run_demo(out, MINIMAL, overwrite=True)
    assert _mtimes(out) == before  # refused before anything was removed
    in_cache.unlink()
    sae = out / "saes" / "layer_2" / "cls" / "sae.safetensors"
    first = sae.stat().st_mtime_ns
    run_demo(out, MINIMAL, overwrite=True)
    assert all(p.read_text() == "the user's" for p in mine)
    assert sae.stat().st_mtime_ns != first  # retrained


def test_other_settings_are_refused_before_anything_is_removed(tmp_path):
    out = tmp_path / "demo"
    run_demo(out, MINIMAL)
    before = _mtimes(out)
    with pytest.raises(SaeVitError, match="trained with other settings.*n_tokens 20000 instead of 30000.*--overwrite"):
        run_demo(out, DemoConfig(**{**MINIMAL.__dict__, "n_tokens": 30_000}))
    with pytest.raises(SaeVitError, match="saes_relu.*trained with other settings.*lr 0.004 instead of 0.002"):
        run_demo(out, DemoConfig(**{**MINIMAL.__dict__, "relu_lr": 2e-3}))
    with pytest.raises(SaeVitError, match="already exists \\(trained with other settings.*--overwrite"):  # train's re-run rule
        run_demo(out, DemoConfig(**{**MINIMAL.__dict__, "relu_batch_size": 100}))
    with pytest.raises(SaeVitError, match="cache made with other settings.*--overwrite"):
        run_demo(out, DemoConfig(**{**MINIMAL.__dict__, "n_images": 100}))
    with pytest.raises(SaeVitError, match="out of range"):  # a bad option, even with overwrite
        run_demo(out, DemoConfig(**{**MINIMAL.__dict__, "layers": (2, 20)}), overwrite=True)
    assert _mtimes(out) == before
