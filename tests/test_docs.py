"""docs/api.md covers the public API: every name the package exports and every command."""

from __future__ import annotations

import re
from pathlib import Path

import adafuse_plugin as af
from adafuse_plugin.cli import build_parser

API = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()


def test_every_exported_name_is_documented():
    spans = re.findall(r"`([^`]+)`", API)
    documented = {name for span in spans for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span)}
    missing = sorted(set(af.__all__) - documented)
    assert not missing, f"docs/api.md lacks {missing}"


def test_every_command_is_documented():
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    missing = sorted(name for name in commands if f"`adafuse {name}" not in API)
    assert not missing, f"docs/api.md lacks the commands {missing}"
