"""The whole default ``saevit demo`` in a fresh folder: wall time per step and in total (acceptance: < 5 min on
the 2-core CPU), with the machine's load average so a shared machine's figure can be read for what it is.

    python benchmarks/bench_demo.py                 # a fresh temporary folder, removed afterwards
    python benchmarks/bench_demo.py --out DIR       # keep the outputs (DIR must not exist yet)
    python benchmarks/bench_demo.py --rerun         # then run it again in the same folder (the re-run rule)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rerun", action="store_true", help="Run the demo a second time in the same folder.")
    args = parser.parse_args()
    import torch

    from sae_vit.pipeline.demo import DemoConfig, run_demo

    if args.out is not None and args.out.exists():
        parser.error(f"{args.out} exists; the benchmark measures a fresh folder")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_demo_")) / "demo"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {_load()} before")
    runs = ["fresh folder"] + (["re-run, same folder"] if args.rerun else [])
    try:
        for name in runs:
            t0 = time.perf_counter()
            result = run_demo(out, DemoConfig())
            wall = time.perf_counter() - t0
            steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
            print(f"{name}: {wall:.1f} s wall ({steps}); {_load()} after")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {rss:.0f} MiB; report: {result.report}")
    finally:
        if args.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
