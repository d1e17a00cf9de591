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


def _run(out: Path):
    """One default demo into ``out``: (result, wall seconds, CPU seconds of this process per step)."""
    from sae_vit.pipeline.demo import DemoConfig, run_demo

    marks = []  # process CPU time at each numbered step message ("1/8 caching ...")

    def progress(message: str) -> None:
        if message[:1].isdigit():
            marks.append(time.process_time())

    t0 = time.perf_counter()
    result = run_demo(out, DemoConfig(), progress=progress)
    wall = time.perf_counter() - t0
    cpu = {k: b - a for k, a, b in zip(result.timings, marks, marks[1:], strict=False)}
    return result, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rerun", action="store_true", help="Run the demo a second time in the same folder.")
    args = parser.parse_args()
    import torch

    if args.out is not None and args.out.exists():
        parser.error(f"{args.out} exists; the benchmark measures a fresh folder")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_demo_")) / "demo"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {_load()} before")
    runs = ["fresh folder"] + (["re-run, same folder"] if args.rerun else [])
    try:
        for name in runs:
            result, wall, cpu = _run(out)
            steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
            print(f"{name}: {wall:.1f} s wall ({steps}); {_load()} after")
            print("  CPU seconds of this process per step (less skewed by other jobs than wall time): "
                  + ", ".join(f"{k} {c:.1f}" for k, c in cpu.items()))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {rss:.0f} MiB; report: {result.report}")
    finally:
        if args.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
