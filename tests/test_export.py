"""Export of patched models: torch.export with a dynamic number of clips, ONNX checked with
ONNX Runtime, decisions as optional outputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import adafuse_plugin as af
from adafuse_plugin.export import WithDecisions, export_onnx, export_program

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model(spread_resnet18) -> nn.Module:
    """A patched eval ResNet-18 (4 frames per clip) whose policies take every action."""
    return spread_resnet18(4).eval()


def _eager(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with torch.no_grad():
        return model(x), af.collect_decisions(model)


@pytest.mark.slow
def test_dynamic_batch_export_finishes_and_matches_eager():
    """In a child process with a deadline: the bug this guards was a hang (symbolic
    N*T // T shapes growing with every block), not an exception."""
    script = textwrap.dedent(
        """
        import time, torch, timm, adafuse_plugin as af
        from adafuse_plugin.export import export_program
        torch.manual_seed(0)
        net = af.patch_model(timm.create_model("resnet18", num_classes=5), num_segments=4).eval()
        start = time.perf_counter()
        program = export_program(net, torch.randn(8, 3, 32, 32)).module()
        print(f"seconds {time.perf_counter() - start:.1f}")
        for clips in (1, 3):
            x = torch.randn(4 * clips, 3, 32, 32)
            with torch.no_grad():
                assert torch.allclose(program(x), net(x), atol=1e-5), clips
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ok" in done.stdout


@pytest.mark.slow
def test_exported_program_returns_the_decisions_of_each_call(model):
    program = export_program(model, torch.randn(8, 3, 32, 32), decisions=True).module()
    names = WithDecisions(model).block_names
    for clips in (1, 3):
        x = torch.randn(4 * clips, 3, 32, 32)
        output, *decisions = program(x)
        expected, expected_decisions = _eager(model, x)
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
        assert len(decisions) == len(names)
        for name, got in zip(names, decisions):
            assert got.shape == (clips, 4, expected_decisions[name].shape[-1])
            assert torch.equal(got, expected_decisions[name]), name
    assert (torch.cat([d.flatten() for d in decisions]).bincount(minlength=3) > 0).all()
    with pytest.raises(Exception, match="% 4"):  # the program keeps the clip layout check
        program(torch.randn(6, 3, 32, 32))


@pytest.mark.slow
def test_onnx_runtime_output_equals_pytorch(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export_onnx(model, torch.randn(8, 3, 32, 32), tmp_path / "m.onnx", decisions=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    blocks = WithDecisions(model).block_names
    assert names == ["output", *(f"decisions/{b}" for b in blocks)]
    for clips in (1, 3):
        x = torch.randn(4 * clips, 3, 32, 32)
        output, *decisions = session.run(None, {"frames": x.numpy()})
        expected, expected_decisions = _eager(model, x)
        torch.testing.assert_close(torch.from_numpy(output), expected, atol=1e-4, rtol=1e-4)
        for block, got in zip(blocks, decisions):
            assert torch.equal(torch.from_numpy(got), expected_decisions[block]), block


def test_export_refuses_what_it_cannot_reproduce(model):
    x = torch.randn(8, 3, 32, 32)
    with pytest.raises(af.AdaFuseInputError, match=r"model\.eval\(\)"):
        export_program(model.train(), x)
    model.eval()
    af.set_eval_decisions(model, "gumbel")
    with pytest.raises(af.AdaFuseInputError, match="argmax"):
        export_program(model, x)
    af.set_eval_decisions(model, "argmax")
    with pytest.raises(af.AdaFuseInputError, match=r"num_segments=4, got \(6, 3, 32, 32\)"):
        export_program(model, torch.randn(6, 3, 32, 32))
    with pytest.raises(af.AdaFusePatchError, match="patch_model first"):
        WithDecisions(nn.Conv2d(3, 3, 1))
