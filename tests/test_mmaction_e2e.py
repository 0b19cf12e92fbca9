"""Slow end-to-end runs of the mmaction2 integration on generated videos (CPU).

A real mmengine Runner trains the small AdaFuse-TSM R18 config through the ``adafuse``
CLI, validates, tests, resumes, and audits a split; a two-process torchrun (gloo)
job trains with identical weights on both ranks afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmaction")

from adafuse_plugin.cli import main  # noqa: E402
from adafuse_plugin.demo.videos import generate_dataset  # noqa: E402
from adafuse_plugin.mmaction.compat import safe_load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "mmaction_configs/adafuse-tsm_r18_1xb2-1x1x4-2e_synthetic-rgb.py")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, size="tiny", num_frames=16, frame_size=64, progress=False)
    return str(root)


def data_options(root: str, **extra: object) -> list[str]:
    """--cfg-options pointing every split at ``root``."""
    options = []
    for split in ("train", "val", "test"):
        options += [
            f"{split}_dataloader.dataset.ann_file={root}/{split}_list.txt",
            f"{split}_dataloader.dataset.data_prefix.video={root}",
        ]
    return options + [f"{key}={value}" for key, value in extra.items()]


def scalars(work_dir: Path) -> list[dict]:
    """Every record of the run's scalars.json logs."""
    return [
        json.loads(line)
        for path in sorted(work_dir.glob("*/vis_data/scalars.json"))
        for line in path.read_text().splitlines()
    ]


@pytest.mark.slow
def test_train_validate_test_resume_audit(data_root, tmp_path, capsys):
    work_dir = tmp_path / "work"
    options = data_options(data_root, **{"train_cfg.max_epochs": 1, "experiment_name": "e2e_a"})
    common = ["--work-dir", str(work_dir), "--cfg-options", *options]
    assert main(["train", CONFIG, *common]) == 0

    records = scalars(work_dir)
    train = [r for r in records if "loss_flops" in r]
    assert train, records[:2]
    assert all(r["loss"] == pytest.approx(r["loss_cls"] + r["loss_flops"], abs=1e-3) for r in train)
    assert {"keep_ratio", "reuse_ratio", "skip_ratio", "gflops_adaptive", "tau"} <= set(train[0])
    assert {"layer1.0/keep", "layer4.1/skip"} <= set(train[0])
    val = [r for r in records if "acc/top1" in r]
    assert len(val) == 1
    mix = sum(val[0][f"acc/{a}"] for a in ("keep", "reuse", "skip"))
    assert mix == pytest.approx(1.0)
    assert 0 < val[0]["acc/gflops_real"] < val[0]["acc/gflops_upb"] <= val[0]["acc/gflops_dense"]

    checkpoint = work_dir / "epoch_1.pth"
    assert main(["test", CONFIG, str(checkpoint), *common]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.rindex("\n{") + 1 :])  # the CLI prints the metrics last
    assert 0.0 <= metrics["acc/top1"] <= 1.0
    assert metrics["acc/gflops_real"] < metrics["acc/gflops_dense"]

    sampled = []  # the authors' protocol: Gumbel-sampled decisions, reproducible by seed
    for _ in range(2):
        argv = ["test", CONFIG, str(checkpoint), "--decisions", "gumbel", "--seed", "3", *common]
        assert main(argv) == 0
        out = capsys.readouterr().out
        sampled.append(json.loads(out[out.rindex("\n{") + 1 :]))
    assert sampled[0] == sampled[1]
    assert sampled[0]["acc/keep"] != metrics["acc/keep"]

    resumed = data_options(data_root, **{"train_cfg.max_epochs": 2, "experiment_name": "e2e_b"})
    argv = ["train", CONFIG, "--resume", "--work-dir", str(work_dir), "--cfg-options", *resumed]
    assert main(argv) == 0
    state = safe_load_checkpoint(work_dir / "epoch_2.pth")
    assert state["meta"]["epoch"] == 2 and state["meta"]["iter"] == 20
    assert any(k.endswith("adafuse.policy_net.fc1.weight") for k in state["state_dict"])
    epoch_two = [r for r in scalars(work_dir) if "loss_flops" in r and r["epoch"] == 2]
    assert len(epoch_two) == 10  # resumed at epoch 2, not retrained from scratch

    capsys.readouterr()
    argv = [
        "audit",
        CONFIG,
        "--checkpoint",
        str(work_dir / "epoch_2.pth"),
        "--data",
        "val",
        "--json",
        "--cfg-options",
        *options,
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clips_seen"] == 20 and len(report["blocks"]) == 8
    assert report["adaptive"] < report["dense"]


@pytest.mark.slow
def test_resume_after_an_epoch_is_bit_exact(data_root, tmp_path):
    """Kill after epoch 1, resume: the weights of epoch 2 equal the uninterrupted run's
    (AdaFuseHook reseeds every epoch; mmengine restores the run's seed)."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    options = data_options(data_root, **{"train_cfg.max_epochs": 2, "experiment_name": "x_a"})
    assert main(["train", CONFIG, "--work-dir", str(full), "--cfg-options", *options]) == 0
    resumed.mkdir()
    shutil.copy(full / "epoch_1.pth", resumed / "epoch_1.pth")  # as if killed after epoch 1
    options = data_options(data_root, **{"train_cfg.max_epochs": 2, "experiment_name": "x_b"})
    resume = ["--resume", str(resumed / "epoch_1.pth"), "--work-dir", str(resumed)]
    assert main(["train", CONFIG, *resume, "--cfg-options", *options]) == 0
    expected = safe_load_checkpoint(full / "epoch_2.pth")["state_dict"]
    actual = safe_load_checkpoint(resumed / "epoch_2.pth")["state_dict"]
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not different, different[:5]


DIST_SCRIPT = """
import argparse
import sys
import torch
import torch.distributed as dist
from mmengine.config import DictAction
from adafuse_plugin.mmaction import build_runner, load_config

torch.set_num_threads(1)
parser = argparse.ArgumentParser()
parser.add_argument("options", nargs="*", action=DictAction)
options = parser.parse_args(sys.argv[3:]).options or {}
cfg = load_config(sys.argv[1], options)
cfg.work_dir = sys.argv[2]
runner = build_runner(cfg, launcher="pytorch")
runner.train()
params = {k: v.detach().clone() for k, v in runner.model.module.named_parameters()}
torch.save(params, f"{sys.argv[2]}/params_rank{dist.get_rank()}.pt")
"""


@pytest.mark.slow
def test_two_process_distributed_training(data_root, tmp_path):
    """torchrun + gloo on CPU: both ranks train and end with identical weights."""
    work_dir = tmp_path / "dist"
    work_dir.mkdir()
    script = tmp_path / "train_dist.py"
    script.write_text(DIST_SCRIPT)
    options = data_options(
        data_root,
        **{"train_cfg.max_epochs": 1, "train_cfg.val_interval": 5, "experiment_name": "e2e_dist"},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29531",
        str(script),
        CONFIG,
        str(work_dir),
        *options,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = safe_load_checkpoint(work_dir / "epoch_1.pth")
    assert state["meta"]["iter"] == 5  # 20 clips / (2 ranks x batch 2)
    rank0, rank1 = (torch.load(work_dir / f"params_rank{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert any("adafuse.policy_net" in name for name in rank0)
    for name, value in rank0.items():
        torch.testing.assert_close(value, rank1[name], msg=f"{name} differs between ranks")


MMACTION_CHILD_CONFIG = """
_base_ = ["mmaction::_base_/models/tsm_r50.py", "mmaction::_base_/default_runtime.py"]
custom_imports = dict(imports=["adafuse_plugin.mmaction"], allow_failed_imports=False)
model = dict(
    type="AdaFuseRecognizer2D",
    backbone=dict(depth=18, pretrained=None, num_segments=4),
    cls_head=dict(num_classes=10, in_channels=512, num_segments=4),
    adafuse=dict(num_segments=4, input_size=64, hidden_size=16, flops_weight=0.1),
)
pipeline = [
    dict(type="DecordInit"),
    dict(type="SampleFrames", clip_len=1, frame_interval=1, num_clips=4, test_mode=True),
    dict(type="DecordDecode"),
    dict(type="Resize", scale=(64, 64), keep_ratio=False),
    dict(type="FormatShape", input_format="NCHW"),
    dict(type="PackActionInputs"),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(type="VideoDataset", ann_file="{root}/train_list.txt",
                 data_prefix=dict(video="{root}"), pipeline=pipeline),
)
test_dataloader = dict(
    batch_size=2, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="VideoDataset", ann_file="{root}/test_list.txt",
                 data_prefix=dict(video="{root}"), pipeline=pipeline, test_mode=True),
)
test_evaluator = dict(type="AdaFuseMetric")
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=1, val_interval=1)
test_cfg = dict(type="TestLoop")
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9))
param_scheduler = []
"""


@pytest.mark.slow
def test_mmaction2_tools_run_an_mmaction_config_in_a_fresh_process(data_root, tmp_path):
    """`adafuse tools train / test / get_flops`: mmaction2's own scripts, each in a fresh
    interpreter, on a config that inherits 'mmaction::' bases (which mmengine resolves
    before any custom_imports could fix its lookups)."""
    config = tmp_path / "adafuse_mmaction_child.py"
    config.write_text(MMACTION_CHILD_CONFIG.replace("{root}", data_root))
    work_dir = tmp_path / "work"
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def tool(*argv: str) -> str:
        command = [sys.executable, "-m", "adafuse_plugin.cli", "tools", *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    tool("train", str(config), "--work-dir", str(work_dir))
    checkpoint = work_dir / "epoch_1.pth"
    state = safe_load_checkpoint(checkpoint)
    assert any(".adafuse.policy_net." in key for key in state["state_dict"])
    out = tool("test", str(config), str(checkpoint), "--work-dir", str(work_dir))
    assert "acc/gflops_real" in out and "acc/top1" in out
    out = tool("get_flops", str(config), "--shape", "4", "3", "64", "64")  # T C H W
    assert "Flops:" in out and "Params:" in out
