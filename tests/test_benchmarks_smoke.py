"""The GPU benchmark's code runs (on the CPU, tiny sizes), so it cannot rot between the
sessions that have a GPU; its numbers are recorded in docs/gpu.md, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_timings_runs_on_the_cpu(tmp_path):
    pytest.importorskip("timm")
    output = tmp_path / "table.md"
    options = "--device cpu --models resnet18 --size 32 --segments 2 --clips 2 --iterations 1 "
    options += "--train-iterations 1 --warmup 1 --precisions float32"
    script = str(ROOT / "benchmarks" / "gpu_timings.py")
    command = [sys.executable, script, *options.split(), "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = output.read_text()
    for heading in ("Streaming, batch 1", "Batched clips", "Training step"):
        assert heading in table
    assert "| resnet18 | dynamic 40% per channel |" in table
    assert "| resnet50 | float32 | adafuse |" in table


def test_gpu_timings_without_a_gpu_exits_cleanly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_timings.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "no CUDA device" in done.stdout


@pytest.mark.slow
def test_recipe_benchmark_runs_end_to_end(tmp_path):
    """Pretrain, adapt from the pretrained weights, matched baselines, table and plot."""
    pytest.importorskip("mmaction")
    options = "--size tiny --epochs 1 --adapt-epochs 1 --lambdas 0.05 --seeds 0 --workers 1"
    script = str(ROOT / "benchmarks" / "recipe.py")
    command = [sys.executable, script, *options.split(), "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "recipe.json").read_text())
    models = [row["model"] for row in report["summary"]]
    assert models[:2] == ["TSN", "TSM"] and "AdaFuse-TSM+Last" in models and "Random" in models
    adapted = next(r for r in report["results"] if r["model"] == "AdaFuse λ=0.05")
    assert 0.0 <= adapted["within_pair"] <= 1.0
    assert (tmp_path / "recipe.png").stat().st_size > 10_000
