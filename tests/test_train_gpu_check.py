"""benchmarks/gpu_check.py runs end to end on the CPU at its small size (CI's stand-in for a GPU machine)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_small_on_cpu():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--small"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "gpu_check: all sections passed" in text
    for figure in ("ours-fp32", "ours-bf16", "bound-bf16", "images/s", "feature-strengths/s"):
        assert figure in text
