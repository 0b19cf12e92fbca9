"""The ``adafuse`` command line."""

from __future__ import annotations

import json

import pytest

from adafuse_plugin.cli import main


def test_audit_prints_json_with_adaptive_flops(capsys):
    assert main(["audit", "resnet18", "--frames", "2", "--size", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 2 and len(report["blocks"]) == 8
    assert 0 < report["adaptive"] < report["dense"]


def test_audit_rejects_unknown_models(capsys):
    assert main(["audit", "no_such_model"]) == 2
    assert "unknown timm model 'no_such_model'" in capsys.readouterr().err


def test_unknown_subcommand_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["frobnicate"])


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test's command."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_audit_reports_parameters_of_a_timm_model(capsys):
    import timm

    import adafuse_plugin as af

    argv = ["audit", "resnet18", "--frames", "2", "--size", "32", "--policy", "adafuse"]
    assert main([*argv, "--num-classes", "5", "--json"]) == 0
    params = json.loads(capsys.readouterr().out)["params"]
    model = af.patch_model(timm.create_model("resnet18", num_classes=5), num_segments=2)
    added = sum(p.numel() for n, p in model.named_parameters() if ".adafuse." in n)
    assert params == {"total": sum(p.numel() for p in model.parameters()), "adafuse": added}


@pytest.mark.slow
def test_audit_of_a_config_builds_no_pretrained_weights(no_network, capsys):
    """The EfficientNet configs ask timm for pretrained weights: an audit must not fetch
    them (the socket is closed here), and prints the parameters."""
    pytest.importorskip("mmaction")
    from pathlib import Path

    config = Path(__file__).parents[1] / "mmaction_configs"
    config /= "adafuse-tsn_efficientnet-b0_8xb8-1x1x8-50e_sthv1-rgb.py"
    assert main(["audit", str(config)]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "added by AdaFuse" in out


def test_train_flags_reach_the_config(monkeypatch, tmp_path):
    """--amp, --auto-scale-lr, --seed, --deterministic and --cfg-options (DictAction) as
    mmaction2's tools/train.py applies them; the runner is built from what they set."""
    pytest.importorskip("mmaction")
    from pathlib import Path

    import adafuse_plugin.mmaction.runner as runner_module

    built = {}
    monkeypatch.setattr(
        runner_module, "build_runner", lambda cfg, launcher: built.setdefault("cfg", cfg)
    )
    config = Path(__file__).parents[1] / "mmaction_configs"
    config /= "adafuse-tsn_r50_8xb8-1x1x8-50e_sthv1-rgb.py"
    from adafuse_plugin.cli import _runner, build_parser

    argv = ["train", str(config), "--amp", "--auto-scale-lr", "--seed", "7", "--deterministic"]
    argv += ["--work-dir", str(tmp_path), "--cfg-options", "train_cfg.max_epochs=3"]
    argv += ["model.adafuse.flops_weight=0.2"]
    _runner(build_parser().parse_args(argv))
    cfg = built["cfg"]
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.loss_scale == "dynamic"
    assert cfg.auto_scale_lr.enable is True
    assert cfg.randomness == dict(cfg.randomness, seed=7, deterministic=True)
    assert cfg.train_cfg.max_epochs == 3 and cfg.model.adafuse.flops_weight == 0.2
