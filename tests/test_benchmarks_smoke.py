"""The GPU benchmark's code runs (on the CPU, tiny sizes), so it cannot rot between the
sessions that have a GPU; its numbers are recorded in docs/gpu.md, never asserted."""

from __future__ import annotations

import json
import os
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


@pytest.mark.slow
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
    options = "--size tiny --frame-size 32 --epochs 1 --adapt-epochs 1 --lambdas 0.05 --workers 1"
    script = str(ROOT / "benchmarks" / "recipe.py")

    def recipe(*more: str) -> None:
        command = [sys.executable, script, *options.split(), *more]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]

    recipe("--seeds", "0", "--out", str(tmp_path))
    report = json.loads((tmp_path / "recipe.json").read_text())
    models = [row["model"] for row in report["summary"]]
    assert (
        models[:2] == ["TSN", "TSM"] and "AdaFuse-TSM+Last" in models and "Random λ=0.05" in models
    )
    adapted = next(r for r in report["results"] if r["model"] == "AdaFuse λ=0.05")
    assert 0.0 <= adapted["within_pair"] <= 1.0
    assert (tmp_path / "recipe.png").stat().st_size > 10_000
    assert "| moving_right / moving_left |" in (tmp_path / "recipe.md").read_text()
    # --retest tests the checkpoints again: the per-pair accuracy comes back to runs
    # recorded without it, and a recorded result that does not reproduce is an error.
    older = tmp_path / "older"
    older.mkdir()
    for name in ("settings.json", "arguments.json"):
        (older / name).write_text((tmp_path / name).read_text())
    (older / "data").symlink_to(tmp_path / "data")
    kept = [r for r in report["results"] if r["model"] in ("TSN", "AdaFuse λ=0.05")]
    stripped = [{k: v for k, v in r.items() if k != "pairs"} for r in kept]
    (older / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    recipe("--retest", "--out", str(older))
    back = [json.loads(line) for line in (older / "runs.jsonl").read_text().splitlines()]
    assert [r["pairs"] for r in back] == [r["pairs"] for r in kept] and len(kept[0]["pairs"]) == 5
    stripped[1]["top1"] += 0.05
    (older / "recipe.json").unlink()  # (written by the retest's report; read before runs.jsonl)
    (older / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    command = [sys.executable, script, "--retest", "--out", str(older)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0 and "not the run that was recorded" in done.stderr
    # A sweep cut short is reported from the runs it finished, with the settings it ran with.
    (tmp_path / "recipe.json").unlink()
    recipe("--seeds", "0", "--epochs", "7", "--report-only", "--out", str(tmp_path))
    again = json.loads((tmp_path / "recipe.json").read_text())
    assert again["summary"] == report["summary"] and again["settings"]["epochs"] == 1
    # --pretrained reuses seed 0's TSN / TSM and trains only the seed it lacks.
    more = tmp_path / "more"
    recipe(
        "--seeds", "0", "1", "--pretrain-only", "--pretrained", str(tmp_path), "--out", str(more)
    )
    runs = [json.loads(line) for line in (more / "runs.jsonl").read_text().splitlines()]
    # the reused seed-0 runs are logged first, then the one trained now
    assert [(r["model"], r["seed"]) for r in runs] == [
        ("TSN", 0),
        ("TSM", 0),
        ("TSN", 1),
        ("TSM", 1),
    ]
    kept = json.loads((more / "recipe.json").read_text())["results"]
    assert {(r["model"], r["seed"], r["top1"]) for r in kept} >= {
        (r["model"], 0, r["top1"]) for r in report["results"] if r["model"] in ("TSN", "TSM")
    }
    # A pretraining cut short (runs.jsonl, no recipe.json) is reused too; skipped models
    # are not run (Random λ=0.05 still matched to AdaFuse λ=0.05).
    (more / "recipe.json").unlink()
    short = tmp_path / "short"
    skipped = [
        "TSN adapted",
        "Ada. Skip λ=0.05",
        "AdaFuse-TSM λ=0.05",
        "AdaFuse-TSM+Last",
        "Threshold λ=0.05",
    ]
    recipe(
        "--seeds", "1", "--pretrained", str(more), "--out", str(short), "--skip-models", *skipped
    )
    runs = [json.loads(line) for line in (short / "runs.jsonl").read_text().splitlines()]
    assert [r["model"] for r in runs] == ["TSN", "TSM", "AdaFuse λ=0.05", "Random λ=0.05"]
    assert (
        runs[0]["checkpoint"]
        == next(r for r in kept if r["model"] == "TSN" and r["seed"] == 1)["checkpoint"]
    )
    # Adapted runs with every setting equal are reused as well: only Threshold runs now.
    again = tmp_path / "again"
    skipped = ["TSN adapted", "Ada. Skip λ=0.05", "AdaFuse-TSM λ=0.05", "AdaFuse-TSM+Last"]
    recipe(
        "--seeds", "1", "--pretrained", str(short), "--out", str(again), "--skip-models", *skipped
    )
    rerun = [json.loads(line) for line in (again / "runs.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rerun] == [r["model"] for r in runs] + ["Threshold λ=0.05"]
    assert rerun[2]["top1"] == runs[2]["top1"] and rerun[2]["checkpoint"] == runs[2]["checkpoint"]


def test_grid_report_summarises_the_recorded_runs(tmp_path):
    """The pretraining grid's table (docs/results.md) comes from the recorded runs: its
    cells equal the mean and std computed here from the raw files, with the stopped
    sweep's seeds 1-2 joined to the grid point they ran at."""
    pytest.importorskip("matplotlib")
    import shutil
    import statistics

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe import grid_report

    shutil.copytree(ROOT / "docs" / "data" / "recipe_h200", tmp_path, dirs_exist_ok=True)
    table = grid_report(tmp_path).splitlines()
    grid = json.loads((tmp_path / "grid-motion-64-medium" / "recipe.json").read_text())
    sweep = (tmp_path / "recipe-motion" / "runs.jsonl").read_text().splitlines()
    runs = grid["results"] + [r for r in map(json.loads, sweep) if r["seed"] != 0]
    pair = [100 * r["within_pair"] for r in runs if r["model"] == "TSM"]
    assert len(pair) == 3
    cell = f"{statistics.mean(pair):.1f} ± {statistics.stdev(pair):.1f}"
    row = next(line for line in table if line.startswith("| motion | 64x64 | medium |"))
    assert row.split(" | ")[6] == cell and row.split(" | ")[7] == "3"
    assert sum(line.startswith("| cycles |") for line in table) == 3
    assert (tmp_path / "pretraining_grid.png").stat().st_size > 10_000


def test_recipe_targets_read_the_lambda_sweeps():
    """A sweep target is met where some lambda meets it, and only then; the curve check
    interpolates AdaFuse's lambda sweep at the other method's FLOPs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe import targets

    def row(model: str, top1: float, share: float) -> dict:
        return dict(
            model=model, top1=top1, within_pair=top1, gflops=share, flops_share=share, seeds=1
        ) | {"top1_std": 0.0}

    rows = [
        row("TSN", 40, 1.0),
        row("TSM", 80, 1.0),
        row("AdaFuse λ=0.05", 72, 0.75),
        row("AdaFuse λ=0.1", 71, 0.69),
        row("Ada. Skip λ=0.1", 70, 0.72),
        row("AdaFuse-TSM λ=0.05", 82, 0.78),
        row("AdaFuse-TSM λ=0.1", 76, 0.60),
        row("AdaFuse-TSM+Last", 80, 0.93),
    ]
    lines = targets(rows, "AdaFuse λ=0.05")

    def line(start: str) -> str:
        return line_in(lines, start)

    assert line("AdaFuse >= TSN + 30").startswith("- [x]")  # lambda 0.1 only
    assert "λ=0.05: 72.0 vs 40.0, 75 %" in line("AdaFuse >= TSN + 30")
    assert line("AdaFuse-TSM >= TSM - 3").startswith("- [ ]")  # 76 < 77 at 60 %, 82 at 78 %
    assert line("AdaFuse-TSM+Last").startswith("- [x]")
    # Ada. Skip at 0.72: the curve between (0.69, 71) and (0.75, 72) is 71.5 >= 70.
    assert line("AdaFuse's lambda curve on or above Ada. Skip").startswith("- [x]")
    rows[6]["top1"] = 77
    assert line_in(targets(rows, "AdaFuse λ=0.05"), "AdaFuse-TSM >= TSM - 3").startswith("- [x]")
    del rows[5:7]
    assert "not run (AdaFuse-TSM λ=...)" in line_in(targets(rows, "x"), "AdaFuse-TSM >= TSM")


def line_in(lines: list[str], start: str) -> str:
    """The target line (``- [x] text: values``) whose text starts with ``start``."""
    return next(t for t in lines if t[6:].startswith(start))


def test_recipe_matches_random_and_threshold_to_each_lambda():
    """Random / Threshold λ=x take the mix of AdaFuse λ=x of the same seed."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe import matched

    def run(model: str, seed: int, mix: tuple[float, float, float]) -> dict:
        return {"model": model, "seed": seed, "mix": dict(zip(("keep", "reuse", "skip"), mix))}

    results = [
        run("TSN", 0, (1.0, 0.0, 0.0)),
        run("AdaFuse λ=0.05", 0, (0.5, 0.1, 0.4)),
        run("AdaFuse λ=0.05", 1, (0.9, 0.1, 0.0)),
        run("Ada. Skip λ=0.2", 0, (0.3, 0.0, 0.7)),
        run("AdaFuse λ=0.2", 0, (0.3, 0.1, 0.6)),
    ]
    variants = {v.name: v for v in matched(results, 0)}
    assert list(variants) == [
        "Random λ=0.05",
        "Threshold λ=0.05",
        "Random λ=0.2",
        "Threshold λ=0.2",
    ]
    assert variants["Random λ=0.2"].options["random_ratios"] == pytest.approx((0.3, 0.1, 0.6))
    assert variants["Threshold λ=0.05"].options["threshold_keep_ratio"] == pytest.approx(0.6)
    assert {v.init_from for v in variants.values()} == {"TSN"}


def test_recipe_pairs_table_averages_each_pair_over_seeds():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe import pairs_table

    from adafuse_plugin.demo import DemoSettings

    runs = [
        {"model": "TSM", "pairs": {"0": 1.0, "1": 0.5, "2": 0.5, "3": 0.5}},
        {"model": "TSM", "pairs": {"0": 0.5, "1": 0.5, "2": 0.5, "3": 0.0}},
        {"model": "TSN", "pairs": {}},  # a run before per-pair accuracy was reported
    ]
    table = pairs_table(runs, DemoSettings(family="cycles")).splitlines()
    assert table[0].startswith("| model | orbiting_clockwise / orbiting_anticlockwise | hue_")
    assert table[2:] == ["| TSM | 75 | 50 | 50 | 25 |"]
    assert pairs_table(runs[2:], DemoSettings()) == ""


def test_recipe_refuses_matched_baselines_without_their_adafuse_run(tmp_path):
    """Random / Threshold λ=x take AdaFuse λ=x's mix: skipping only that run is an error
    (before any work), as is an unknown model name."""
    script = str(ROOT / "benchmarks" / "recipe.py")
    for skipped, message in (
        (["AdaFuse λ=0.1"], "Random λ=0.1 and Threshold λ=0.1 are matched to AdaFuse λ=0.1"),
        (["Random"], "--skip-models: unknown ['Random']"),
    ):
        command = [sys.executable, script, "--lambdas", "0.05", "0.1", "--out", str(tmp_path)]
        done = subprocess.run(
            [*command, "--skip-models", *skipped], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "runs.jsonl").exists()


def test_pair_probe_attributes_and_tables():
    """A clip and its time reversal share their attributes (the probe compares clips of
    the two classes by them); a rotation's amount is its turn; tables give each model's
    within-pair accuracy per attribute value."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    from pair_probe import attributes, tables

    from adafuse_plugin.demo.videos import CLASSES, reverse_spec, sample_spec

    rotating = CLASSES.index("rotating_clockwise")
    spec = sample_spec(rotating, np.random.default_rng(3))
    found = attributes(spec)
    assert found == attributes(reverse_spec(spec))
    assert found["amount"] == abs(spec.actor.end.angle - spec.actor.start.angle) > 90
    assert found["distractors"] == len(spec.behind) + len(spec.front)
    records = [
        dict(found, shape=shape, radius_px=r, amount=a, correct={"A": hit, "B": not hit})
        for shape, r, a, hit in [
            ("ring", 8, 100, False),
            ("ring", 9, 120, False),
            ("square", 10, 150, True),
            ("square", 11, 180, True),
            ("square", 12, 190, False),
            ("circle", 13, 200, True),
        ]
    ]
    lines = tables(records, ["A", "B"]).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if "|" in line]
    assert ["all", "6", "50.0", "50.0"] in cells
    assert ["ring", "2", "0.0", "100.0"] in cells and ["square", "3", "66.7", "33.3"] in cells


@pytest.mark.slow
def test_pair_probe_runs_on_a_work_folder(tmp_path):
    """The probe renders fresh clips of a pair and tests a trained model on them."""
    pytest.importorskip("mmaction")
    recipe = [sys.executable, str(ROOT / "benchmarks" / "recipe.py"), "--size", "tiny"]
    recipe += ["--frame-size", "32", "--epochs", "1", "--seeds", "0", "--pretrain-only"]
    done = subprocess.run([*recipe, "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (work_dir,) = tmp_path.rglob("TSM-seed0")
    probe = [sys.executable, str(ROOT / "benchmarks" / "pair_probe.py"), "--clips", "3"]
    probe += ["--pair", "rotating_anticlockwise", "--work-dirs", str(work_dir)]
    probe += ["--out", str(tmp_path / "probe")]
    done = subprocess.run(probe, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    clips = [json.loads(line) for line in (tmp_path / "probe" / "clips.jsonl").open()]
    assert sorted(c["label"] for c in clips) == [6, 6, 6, 7, 7, 7]
    assert all(len(c["scores"]["TSM-seed0"]) == 10 for c in clips)
    report = (tmp_path / "probe" / "pair_probe.md").read_text()
    assert "rotating_clockwise / rotating_anticlockwise, 3 clips per class" in report


def test_recipe_reports_a_dataset_without_pairs():
    """A user's own dataset (--data, classes not in time-reversed pairs) has no within-pair
    accuracy: the table shows '-', the within-pair targets say so, top-1 is summarised."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe import markdown, summarise, targets

    mix = {"keep": 1.0, "reuse": 0.0, "skip": 0.0}
    runs = [
        dict(model=m, seed=s, top1=t, within_pair=None, adaptive_gflops=1.0, mix=mix)
        | {"dense_gflops": 1.0}
        for m, s, t in [("TSN", 0, 0.5), ("TSN", 1, 0.6), ("TSM", 0, 0.8)]
    ]
    rows = summarise(runs)
    assert rows[0]["top1"] == pytest.approx(55.0) and rows[0]["within_pair"] is None
    assert "| TSN | 55.0 ± 7.1 | - |" in markdown(rows)
    lines = targets(rows, "AdaFuse λ=0.05")
    assert "not measured" in line_in(lines, "TSM >= 90 % within pairs")


@pytest.mark.slow
def test_frame_pretrain_writes_a_torchvision_backbone(tmp_path):
    """The frame-level pretraining stand-in trains on the recipe's schedule, tests and
    saves a state dict that a torchvision ResNet-18 loads with only its classifier missing
    (what mmaction2's ``backbone.pretrained`` reads; the loading itself: tests/test_demo.py)."""
    import torch
    import torchvision

    script = str(ROOT / "benchmarks" / "frame_pretrain.py")
    options = "--steps 3 --batch-size 4 --frame-size 32 --test-frames 6 --test-every 2 --threads 1"
    done = subprocess.run(
        [sys.executable, script, *options.split(), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "frames_resnet18.pth", weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    # 3 steps, 10 % warm-up -> one step from 4 % of the peak lr (2e-3), then cosine over two
    assert [entry["lr"] for entry in log] == pytest.approx([0.04 * 2e-3, 2e-3, 1e-3])
    assert [entry["test_top1"] is not None for entry in log] == [False, True, True]
    assert (tmp_path / "frame_pretrain.png").stat().st_size > 5_000
    assert "test top-1" in done.stdout


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        (
            {"INIT": "fp.pth", "BACKBONE_LR_MULT": "0.1", "LAMBDAS": "0.1 0.5"},
            ["--backbone-init", "fp.pth", "--backbone-lr-mult", "0.1", "--lambdas", "0.1", "0.5"],
        ),
    ],
)
def test_recipe_gpu_sweep_passes_its_settings_to_the_recipe(tmp_path, env, expected):
    """recipe_gpu.sh's sweep, with a stand-in ``python`` that records its arguments: both
    families' recipe calls get INIT / BACKBONE_LR_MULT / LAMBDAS, and nothing without them."""
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n')
    stub.chmod(0o755)
    settings = ("INIT", "BACKBONE_LR_MULT", "LAMBDAS")
    inherited = {k: v for k, v in os.environ.items() if k not in settings}
    environment = {**inherited, "PATH": f"{stub.parent}:{os.environ['PATH']}", **env}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "recipe_gpu.sh"), str(tmp_path / "out"), "sweep"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    calls = sorted((tmp_path / "calls").read_text().splitlines())
    assert [call.split()[2] for call in calls] == ["cycles", "motion"]  # --family FAMILY
    for call in calls:
        arguments = call.split()
        assert arguments[0] == "benchmarks/recipe.py" and "--seeds" in arguments
        out = arguments.index("--out")
        assert arguments[out - len(expected) : out] == expected
        flags = [
            a for a in arguments if a in ("--backbone-init", "--backbone-lr-mult", "--lambdas")
        ]
        assert flags == [a for a in expected if a.startswith("--")]
