"""The wheel `pip install .` builds holds the package, its subpackages, the shipped configs
(so `adafuse demo` and `adafuse train` on a shipped config work from a plain install) and
the streaming kernel's C++ source (built on first use)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    # From a clean copy of the sources: a stale build/ folder of a checkout leaks modules
    # that no longer exist into the wheel.
    source = tmp_path / "source"
    local = ("build", "dist", ".venv", ".git", ".gpu_site", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*local), symlinks=True)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    done = subprocess.run(
        [*command, "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("adafuse_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "adafuse_plugin").rglob("*.py")}
    packaged = {n for n in names if n.startswith("adafuse_plugin/") and n.endswith(".py")}
    packaged -= {n for n in packaged if n.startswith("adafuse_plugin/configs/")}
    sources -= {n for n in sources if n.startswith("adafuse_plugin/configs/")}
    assert packaged == sources, (sorted(sources - packaged)[:5], sorted(packaged - sources)[:5])
    configs = ROOT / "adafuse_plugin" / "configs"
    assert "adafuse_plugin/configs/metafile.yml" in names
    assert len([n for n in names if n.startswith("adafuse_plugin/configs/")]) == len(
        [p for p in configs.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    )
    for package in ("demo", "demo/videos", "streaming", "mmaction"):
        assert f"adafuse_plugin/{package}/__init__.py" in names
    assert "adafuse_plugin/streaming/_direct.cpp" in names  # the kernel is built from it
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "adafuse = adafuse_plugin.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
