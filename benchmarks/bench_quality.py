"""Training quality: our trainer against EleutherAI sparsify and SAELens on identical activations, at equal tokens.

For each data set (benchmarks/_data.py: ``known`` dictionary, ``toyclip`` layer-8 cache, ``heavy``-tailed 768-d
synthetic) and seed, both trainers see the same token sequence (same shuffled order, 4,096 tokens per step)
and are scored by the same code (:func:`sae_vit.core.metrics.evaluate`) on the same held-out tokens, which no
setting was chosen on. Rows give the median over seeds of held-out FVU, L0, dead % (latents that never fire on
the held-out tokens) and, for ``known``, the mean best |cos| between a true atom and a decoder row.

* ``defaults``: each trainer as a user runs it (ours: :class:`TrainConfig`; sparsify: its ``TrainConfig``,
  i.e. signum + schedule-free at 5e-3 / sqrt(d_sae / 2**14), no AuxK; SAELens: ``SAETrainerConfig`` and
  ``TopKTrainingSAEConfig``, i.e. Adam at 3e-4, constant, AuxK 1.0), all in fp32 on the CPU. A peer that is
  not installed is skipped (``pip install -e .[bench]``).
* ``--tuned``: each trainer's learning rate picked from a grid (x0.25 .. x4 of its default) by FVU on a
  validation split carved from the *training* tokens (seed 0), then run on every seed.

* ``--demo``: ``saevit demo``'s twelve SAEs (toy CLIP, layers 2/5/8/11 x cls/patches/all, x8, k 16, 400k tokens
  each), trained and scored by the demo's own ``sparsity`` step on the demo's cache, once with the training
  defaults before issue #18 (lr 4e-4, 200 warm-up steps then cosine decay, dead after a tenth of the run, AdamW
  betas (0.9, 0.999)) and once with today's; prints held-out FVU, L0 and dead % per SAE.

    python benchmarks/bench_quality.py                          # 3 data sets x 3 seeds x 3 trainers
    python benchmarks/bench_quality.py --data known --seeds 0 --tuned
    python benchmarks/bench_quality.py --data known --trainers ours,sparsify --tuned-only
    python benchmarks/bench_quality.py --demo
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import _data
import _peers
import torch

from sae_vit.core.metrics import evaluate
from sae_vit.core.train import TrainConfig, auto_lr

BATCH = 4096
LR_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)


def default_lr(trainer: str, setting: dict) -> float:
    """The learning rate each trainer picks by default for a data set's sizes at 4,096 tokens per step."""
    d_sae = setting["d_sae"]
    if trainer == "ours":
        return auto_lr(TrainConfig(batch_size=BATCH), setting["d_in"], d_sae)
    if trainer == "sae-lens":
        return 3e-4  # SAETrainerConfig.lr
    return 5e-3 / (d_sae / 2**14) ** 0.5  # sparsify's signum default


def train(trainer: str, train_x, order, setting: dict, seed: int, lr: float | None):
    if trainer == "ours":
        extra = {"lr": lr} if lr is not None else {}
        return _peers.run_ours(train_x, order, setting["d_sae"], setting["k"], BATCH, seed, dtype="fp32", **extra)
    if trainer == "sae-lens":
        return _peers.run_saelens(train_x, order, setting["d_sae"], setting["k"], BATCH, seed, lr=lr)
    return _peers.run_sparsify(train_x, order, setting["d_sae"], setting["k"], BATCH, seed, lr=lr)


def score(run, held_out, name: str) -> dict:
    m = evaluate(run.sae, held_out, batch_size=BATCH)
    row = {"fvu": m["fvu"], "l0": m["l0"], "dead": 100 * m["dead_fraction"]}
    if name == "known":
        cos = _data.known_dictionary() @ run.sae.W_dec.detach().T
        row["recovery"] = cos.abs().max(dim=1).values.mean().item()
    return row


def tune(trainer: str, name: str, train_x, setting: dict) -> float:
    """The grid learning rate with the lowest FVU on a validation split of the training tokens."""
    perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(123))
    val, fit = train_x[perm[:8192]], train_x[perm[8192:]]
    order = _data.order(len(fit), setting["n_tokens"], seed=123)
    best = None
    for factor in LR_GRID:
        lr = factor * default_lr(trainer, setting)
        fvu = evaluate(train(trainer, fit, order, setting, 0, lr).sae, val)["fvu"]
        print(f"  tune {name} {trainer} lr {lr:.2e}: validation FVU {fvu:.4f}", flush=True)
        best = min(best or (fvu, lr), (fvu, lr))
    return best[1]


def demo(cache_root: Path) -> None:
    """The demo's SAEs with the defaults before #18 and today's, at the demo's token budget (see above)."""
    import tempfile

    import sae_vit.pipeline as api
    from sae_vit.core import train as train_module
    from sae_vit.pipeline.demo import DemoConfig

    cfg = DemoConfig()
    cache = cache_root.with_name(cache_root.name + "-demo")
    if not (cache / "manifest.json").exists():
        api.cache(out=cache, model="toy", layers=list(cfg.layers), tokens="all", max_images=cfg.n_images,
                  seed=cfg.seed, batch_size=128)
    before = TrainConfig(k=cfg.k, expansion=cfg.expansion, seed=cfg.seed, lr=4e-4, warmup_steps=200,
                         schedule="cosine", dead_tokens=cfg.n_tokens // 10)
    today = TrainConfig(k=cfg.k, expansion=cfg.expansion, seed=cfg.seed)
    tables = {}
    for name, config, betas in (("before #18", before, (0.9, 0.999)), ("today", today, train_module.ADAM_BETAS)):
        saved, train_module.ADAM_BETAS = train_module.ADAM_BETAS, betas
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                tables[name] = api.sparsity(cache=cache, grid=True, layers=list(cfg.layers), tokens=list(cfg.tokens),
                                            n_tokens=cfg.n_tokens, out=Path(tmp) / "sparsity.csv", plot=False,
                                            config=config, sae_dir=Path(tmp) / "saes").rows
        finally:
            train_module.ADAM_BETAS = saved
        print(f"  {name}: {len(tables[name])} SAEs in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\nsaevit demo's SAEs, {cfg.n_tokens:,} tokens each, held-out split of the demo cache")
    print(f"{'layer':>5} {'tokens':<8}" + "".join(f"{n + ' FVU':>17}{'L0':>6}{'dead %':>8}" for n in tables))
    rows = {n: t.set_index(["layer", "tokens"]) for n, t in tables.items()}
    first = next(iter(rows.values()))
    for key in first.index:
        cols = "".join(f"{r.loc[key, 'fvu']:>17.4f}{r.loc[key, 'l0']:>6.1f}{100 * r.loc[key, 'dead_fraction']:>8.1f}"
                       for r in rows.values())
        print(f"{key[0]:>5} {key[1]:<8}{cols}")
    print(f"{'mean':>14}" + "".join(f"{r['fvu'].mean():>17.4f}{'':>14}" for r in rows.values()))
    wins = sum(rows["today"].loc[key, "fvu"] < rows["before #18"].loc[key, "fvu"] for key in first.index)
    print(f"today's defaults reach a lower held-out FVU on {wins} of {len(first)} SAEs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="known,toyclip,heavy")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trainers", default="ours,sparsify,sae-lens")
    parser.add_argument("--tuned", action="store_true", help="also tune each trainer's lr (see above)")
    parser.add_argument("--tuned-only", action="store_true", help="only the tuned rows (--tuned without defaults)")
    parser.add_argument("--demo", action="store_true", help="saevit demo's SAEs, defaults before #18 vs today")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "saevit-bench-toyclip",
                        help="toy-CLIP activation cache (built on first use)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.demo:
        print(f"torch {torch.__version__}, {args.threads} thread(s)", flush=True)
        demo(args.cache)
        return
    trainers = [t for t in args.trainers.split(",") if t == "ours" or _peers.have(t)]
    missing = sorted(set(args.trainers.split(",")) - set(trainers))
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"torch {torch.__version__}, {args.threads} thread(s), fp32, {BATCH} tokens per step, seeds {seeds}"
          + (f"; not installed: {', '.join(missing)}" if missing else ""), flush=True)
    modes = ([] if args.tuned_only else ["defaults"]) + (["tuned"] if args.tuned or args.tuned_only else [])
    table: list[tuple] = []
    for name in args.data.split(","):
        setting = _data.SETTINGS[name]
        for mode in modes:
            rows: dict[str, list[dict]] = {t: [] for t in trainers}
            lrs = {t: tune(t, name, _data.load(name, 0, args.cache)[0], setting) if mode == "tuned" else None
                   for t in trainers}
            for seed in seeds:
                train_x, held_out = _data.load(name, seed, args.cache)
                order = _data.order(len(train_x), setting["n_tokens"], seed)
                for trainer in trainers:
                    t0 = time.perf_counter()
                    row = score(train(trainer, train_x, order, setting, seed, lrs[trainer]), held_out, name)
                    row["wall"] = time.perf_counter() - t0
                    rows[trainer].append(row)
                    print(f"  {name} {mode} {trainer} seed {seed}: "
                          + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
            for trainer in trainers:
                med = {k: statistics.median(r[k] for r in rows[trainer]) for k in rows[trainer][0]}
                lr = lrs[trainer] or default_lr(trainer, setting)
                table.append((name, mode, trainer, lr, med))
    print(f"\n{'data':<9}{'mode':<10}{'trainer':<10}{'lr':>9}{'FVU':>9}{'L0':>7}{'dead %':>8}{'recovery':>10}"
          f"{'wall s':>8}   (median over {len(seeds)} seed(s))")
    for name, mode, trainer, lr, med in table:
        rec = f"{med['recovery']:>10.3f}" if "recovery" in med else f"{'':>10}"
        print(f"{name:<9}{mode:<10}{trainer:<10}{lr:>9.2e}{med['fvu']:>9.4f}{med['l0']:>7.1f}{med['dead']:>8.1f}"
              f"{rec}{med['wall']:>8.0f}")


if __name__ == "__main__":
    main()
