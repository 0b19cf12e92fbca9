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
