"""How long `saevit --help` takes (it must not import torch): median of N runs, and the heavy modules loaded.

    python benchmarks/bench_startup.py [--runs 5]
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("saevit")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "sae_vit.cli", "--help"]
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    probe = ("import sys; from typer.testing import CliRunner; from sae_vit.cli import app; "
             "CliRunner().invoke(app, ['--help']); print(sorted(m for m in ('torch', 'timm', 'pandas', 'PIL') "
             "if m in sys.modules))")
    heavy = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    print(f"saevit --help: median {statistics.median(times):.3f} s over {args.runs} runs "
          f"(min {min(times):.3f}, max {max(times):.3f}); heavy modules imported: {heavy}")


if __name__ == "__main__":
    main()
