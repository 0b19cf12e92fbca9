"""`adafuse demo` runs end to end on generated videos and writes its report."""

from __future__ import annotations

import json

from adafuse_plugin.demo import run_demo


def test_quick_demo_trains_evaluates_and_reports(tmp_path):
    results = run_demo(output_dir=tmp_path, quick=True, epochs=1)
    assert [r["model"] for r in results] == ["TSN-R18", "AdaFuse-TSN-R18"]
    tsn, adafuse = results
    assert tsn["adaptive_gflops"] == tsn["dense_gflops"]  # keep-only saves nothing
    assert adafuse["adaptive_gflops"] < adafuse["dense_gflops"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["results"][1]["mix"].keys() == {"keep", "reuse", "skip"}
