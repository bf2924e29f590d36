"""The GPU check (tools/gpu_check.sh -> ``python -m tools.bench gpu``) runs end to end in its smoke size on
the CPU, writes its figures, finds the engine exact against the plain method and a verified bfloat16 run's
selections equal to float32's, and never imports the
dashboard, streamlit or altair (the GPU machine has none of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

BLOCKER = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("streamlit", "altair", "dashboard"):
            raise ImportError(f"{name} is not installed on the GPU machine")
        return None

sys.meta_path.insert(0, Blocker())
"""


@pytest.mark.slow
def test_the_gpu_check_runs_in_smoke_size_without_the_dashboard(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)  # every Python process of the check loads it
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(site)}
    blocked = subprocess.run([sys.executable, "-c", "import streamlit"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "not installed on the GPU machine" in blocked.stderr  # the blocker works
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = json.loads((out / "gpu_bench.json").read_text())["gpu"]
    assert figures["images"] == 64 and figures["workers"] >= 1
    assert figures["engine_images_per_s"] > 0 and figures["loop_images_per_s"] > 0
    assert figures["loop_fraction"] == pytest.approx(figures["loop_images_per_s"] / figures["engine_images_per_s"])
    assert figures["whole_process_s"] > 0 and figures["first_batch_s"] < figures["sweep_s"]
    assert figures["exact_max_dlogit"] < 1e-4 and figures["exact_selections_equal"] is True
    assert 100 < figures["jpeg_kb"] < 200  # photo-like JPEGs, about COCO's size
    text = (out / "gpu_bench.txt").read_text()
    assert "exactness, float32" in text
    # the same images in bfloat16, verified: every selection float32's, some pairs recomputed in float32
    assert figures["bfloat16_selections_differing"] == 0 and 0 < figures["bfloat16_verified_fraction"] < 1
    assert figures["bfloat16_speedup"] == pytest.approx(figures["float32_whole_s"] / figures["bfloat16_whole_s"])
    assert "bfloat16 with float32 verification" in text
    assert "torch" in (out / "env.txt").read_text() and "CUDA available" in text
