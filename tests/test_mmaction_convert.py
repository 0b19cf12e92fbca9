"""The authors' released models: checkpoint conversion and their exact networks.

A checkpoint in the authors' layout is built here from the documented key scheme with
random weights; the converted model must equal a reference forward written below from
the paper's equations and the authors' wiring (shift before conv1 feeding the policy and
the downsample shortcut, per-block BatchNorm1d in shared policies, skip/reuse/keep rows).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mmaction")

from adafuse_plugin import AdaFuseCheckpointError, collect_decisions  # noqa: E402
from adafuse_plugin.mmaction import load_config  # noqa: E402
from adafuse_plugin.mmaction.convert import (  # noqa: E402
    RELEASED,
    build_model,
    convert_checkpoint,
    shipped_config,
)

# Every case builds ResNet-50 recognizers: out of the fast loop (`-m "not slow"`).
pytestmark = pytest.mark.slow

FRAMES, CLASSES, QUOTA = 8, 174, 196608
STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # ResNet-50: (width, blocks)


# -- the authors' layout, from the documented key scheme --------------------------------
def _bn(g: torch.Generator, channels: int) -> dict[str, torch.Tensor]:
    return {
        "weight": torch.rand(channels, generator=g) + 0.5,
        "bias": torch.randn(channels, generator=g) * 0.1,
        "running_mean": torch.randn(channels, generator=g) * 0.1,
        "running_var": torch.rand(channels, generator=g) + 0.5,
        "num_batches_tracked": torch.tensor(1000),
    }


def _conv(g: torch.Generator, out: int, inp: int, k: int) -> torch.Tensor:
    return torch.randn(out, inp, k, k, generator=g) * (2.0 / (inp * k * k)) ** 0.5


def _linear(g: torch.Generator, out: int, inp: int) -> dict[str, torch.Tensor]:
    return {
        "weight": torch.randn(out, inp, generator=g) / inp**0.5,
        "bias": torch.randn(out, generator=g) * 0.1,
    }


def authors_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """``module.base_model.*`` / ``module.new_fc.*`` keys of an AdaFuse R50, random values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"conv1.weight": _conv(g, 64, 3, 7)}
    sd.update({f"bn1.{k}": v for k, v in _bn(g, 64).items()})
    shared: dict[str, tuple[dict, dict]] = {}
    inplanes = 64
    for stage, (width, blocks) in enumerate(STAGES, start=1):
        for index in range(blocks):
            p = f"layer{stage}.{index}."
            sd[p + "conv1.weight"] = _conv(g, width, inplanes, 1)
            sd[p + "conv2.weight"] = _conv(g, width, width, 3)
            sd[p + "conv3.weight"] = _conv(g, 4 * width, width, 1)
            for n, c in ((1, width), (2, width), (3, 4 * width)):
                sd.update({f"{p}bn{n}.{k}": v for k, v in _bn(g, c).items()})
            if index == 0:
                sd[p + "downsample0.weight"] = _conv(g, 4 * width, inplanes, 1)
                sd.update({f"{p}downsample1.{k}": v for k, v in _bn(g, 4 * width).items()})
            if variant != "tsm-last" or stage == 4:
                hidden = QUOTA // width if variant != "tsm-last" else 1024
                key = f"{2 * inplanes}_{3 * width}"
                if variant == "tsm-last":
                    fc0, fc1 = _linear(g, hidden, 2 * inplanes), _linear(g, 3 * width, hidden)
                else:
                    if key not in shared:
                        shared[key] = (
                            _linear(g, hidden, 2 * inplanes),
                            _linear(g, 3 * width, hidden),
                        )
                    fc0, fc1 = shared[key]
                sd.update({f"{p}policy_net.gate_fc0.{k}": v for k, v in fc0.items()})
                sd.update({f"{p}policy_net.gate_fc1.{k}": v for k, v in fc1.items()})
                sd.update({f"{p}policy_net.gate_bn.{k}": v for k, v in _bn(g, hidden).items()})
            inplanes = 4 * width
    for key, (fc0, fc1) in shared.items():
        sd.update({f"gate_fc0s.{key}.{k}": v for k, v in fc0.items()})
        sd.update({f"gate_fc1s.{key}.{k}": v for k, v in fc1.items()})
    state = {f"module.base_model.{k}": v.clone() for k, v in sd.items()}
    state.update({f"module.new_fc.{k}": v for k, v in _linear(g, CLASSES, 2048).items()})
    return state


def write_checkpoint(path: Path, state: dict) -> Path:
    torch.save({"state_dict": state}, path)
    return path


# -- a reference forward of the authors' network, from the equations --------------------
def _shift(x: torch.Tensor, frames: int, div: int = 8) -> torch.Tensor:
    """TSM: channels [0, c/8) read frame t+1, [c/8, 2c/8) frame t-1, zeros past the ends."""
    clips = x.view(-1, frames, *x.shape[1:])
    fold = x.shape[1] // div
    out = clips.clone()
    out[:, :, :fold] = 0
    out[:, :-1, :fold] = clips[:, 1:, :fold]
    out[:, :, fold : 2 * fold] = 0
    out[:, 1:, fold : 2 * fold] = clips[:, :-1, fold : 2 * fold]
    return out.view_as(x)


def _previous(x: torch.Tensor, frames: int) -> torch.Tensor:
    clips = x.view(-1, frames, *x.shape[1:])
    out = torch.zeros_like(clips)
    out[:, 1:] = clips[:, :-1]
    return out.view_as(x)


def reference_forward(sd: dict, x: torch.Tensor, variant: str) -> tuple[torch.Tensor, dict]:
    """Clip logits and per-block decisions (ours: 0 keep, 1 reuse, 2 skip) in eval mode."""
    sd = {k.removeprefix("module."): v.double() for k, v in sd.items()}
    b = {k.removeprefix("base_model."): v for k, v in sd.items()}

    def bn(t, name):
        stats = [b[f"{name}.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
        return F.batch_norm(t, *stats, training=False, eps=1e-5)

    def conv(t, name, **kwargs):
        return F.conv2d(t, b[f"{name}.weight"], **kwargs)

    def linear(t, name):
        return F.linear(t, b[f"{name}.weight"], b[f"{name}.bias"])

    out = F.relu(bn(conv(x, "conv1", stride=2, padding=3), "bn1"))
    out = F.max_pool2d(out, 3, 2, 1)
    decisions = {}
    for stage, (_, blocks) in enumerate(STAGES, start=1):
        for index in range(blocks):
            p = f"layer{stage}.{index}"
            stride = 2 if index == 0 and stage > 1 else 1
            identity = out
            inp = _shift(out, FRAMES) if variant != "tsn" else out
            y = F.relu(bn(conv(inp, p + ".conv1"), p + ".bn1"))
            if p + ".policy_net.gate_fc0.weight" in b:
                v = inp.mean(dim=(2, 3))
                z = torch.cat([_previous(v, FRAMES), v], dim=1)
                z = F.relu(bn(linear(z, p + ".policy_net.gate_fc0"), p + ".policy_net.gate_bn"))
                z = linear(z, p + ".policy_net.gate_fc1")
                action = z.view(z.shape[0], -1, 3).argmax(-1)  # 0 skip, 1 reuse, 2 keep
                keep = (action == 2).double()[..., None, None]
                reuse = (action == 1).double()[..., None, None]
                y = keep * y + reuse * _previous(y, FRAMES)
                decisions[p] = (2 - action).view(-1, FRAMES, action.shape[1])
            y = F.relu(bn(conv(y, p + ".conv2", stride=stride, padding=1), p + ".bn2"))
            y = bn(conv(y, p + ".conv3"), p + ".bn3")
            if p + ".downsample0.weight" in b:
                identity = bn(conv(inp, p + ".downsample0", stride=stride), p + ".downsample1")
            out = F.relu(y + identity)
    logits = F.linear(out.mean(dim=(2, 3)), sd["new_fc.weight"], sd["new_fc.bias"])
    return logits.view(-1, FRAMES, CLASSES).mean(dim=1), decisions


def converted_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    features = model.backbone(x)
    scores = model.cls_head.fc_cls(features.mean(dim=(2, 3)))
    return scores.view(-1, FRAMES, CLASSES).mean(dim=1)


def load_converted(path: Path, variant: str) -> torch.nn.Module:
    from mmengine.runner import load_checkpoint

    model = build_model(load_config(shipped_config(RELEASED[variant]["config"])))
    load_checkpoint(model, str(path), map_location="cpu", strict=True)  # weights-only loader
    return model.double().eval()


# -- tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["tsn", "tsm", "tsm-last"])
def test_released_models_convert_and_equal_the_reference_forward(variant, tmp_path):
    state = authors_state_dict(variant)
    source = write_checkpoint(tmp_path / RELEASED[variant]["file"], state)
    summary = convert_checkpoint(source, tmp_path / "converted.pth")
    assert summary["variant"] == variant and summary["config"].endswith(RELEASED[variant]["config"])
    assert summary["mapped"] + summary["shared_copies_checked"] == len(state)
    assert summary["filled_buffers"] == 0
    assert round(summary["parameters"] / 1e6, 1) == (39.1 if variant == "tsm-last" else 37.7)

    model = load_converted(tmp_path / "converted.pth", variant)
    torch.manual_seed(0)
    x = torch.randn(2 * FRAMES, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected, reference_decisions = reference_forward(state, x, variant)
        actual = converted_logits(model, x)
    decisions = collect_decisions(model.backbone)
    assert decisions.keys() == reference_decisions.keys()
    for name, reference in reference_decisions.items():
        assert torch.equal(decisions[name], reference), name
    mix = torch.cat([d.flatten() for d in decisions.values()]).bincount(minlength=3)
    assert (mix > 0).all(), "every action must occur for the check to mean anything"
    difference = ((actual - expected).abs().max() / expected.abs().max()).item()
    print(f"{variant}: max relative difference to the reference forward {difference:.2e}")
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_mmaction2_tsm_wiring_differs_from_the_authors(tmp_path):
    """Loading released TSM weights into mmaction2's own wiring changes the outputs: the
    wiring option is what makes them load exactly."""
    state = authors_state_dict("tsm")
    source = write_checkpoint(tmp_path / RELEASED["tsm"]["file"], state)
    convert_checkpoint(source, tmp_path / "converted.pth")
    cfg = load_config(shipped_config(RELEASED["tsm"]["config"]))
    cfg.model.adafuse.tsm_wiring = "mmaction2"
    model = build_model(cfg)
    model.load_state_dict(torch.load(tmp_path / "converted.pth")["state_dict"])
    model.double().eval()
    x = torch.randn(FRAMES, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected, _ = reference_forward(state, x, "tsm")
        assert (converted_logits(model, x) - expected).abs().max() > 1e-3


def test_variant_is_needed_when_the_file_name_does_not_tell(tmp_path):
    source = write_checkpoint(tmp_path / "model.pth.tar", authors_state_dict("tsn"))
    with pytest.raises(AdaFuseCheckpointError, match="Pass --variant tsn or tsm"):
        convert_checkpoint(source, tmp_path / "out.pth")
    summary = convert_checkpoint(source, tmp_path / "out.pth", variant="tsn")
    assert summary["variant"] == "tsn"


def test_tsn_checkpoint_with_a_tsm_config_is_refused(tmp_path):
    source = write_checkpoint(tmp_path / RELEASED["tsn"]["file"], authors_state_dict("tsn"))
    config = shipped_config(RELEASED["tsm"]["config"])
    with pytest.raises(AdaFuseCheckpointError, match="is AdaFuse-TSN but .* builds AdaFuse-TSM"):
        convert_checkpoint(source, tmp_path / "out.pth", config=config)
    with pytest.raises(AdaFuseCheckpointError, match="looks like AdaFuse-TSN"):
        convert_checkpoint(source, tmp_path / "out.pth", variant="tsm")


def test_tsm_last_checkpoint_with_a_shared_policy_config_names_the_keys(tmp_path):
    source = write_checkpoint(tmp_path / "x.pth.tar", authors_state_dict("tsm-last"))
    config = shipped_config(RELEASED["tsm"]["config"])
    with pytest.raises(AdaFuseCheckpointError, match="is AdaFuse-TSM-LAST but"):
        convert_checkpoint(source, tmp_path / "out.pth", config=config)


def test_unknown_key_is_named(tmp_path):
    state = authors_state_dict("tsm-last")
    state["module.base_model.layer1.0.extra.weight"] = torch.zeros(3)
    source = write_checkpoint(tmp_path / RELEASED["tsm-last"]["file"], state)
    with pytest.raises(AdaFuseCheckpointError, match=r"no place in the model.*layer1\.0\.extra"):
        convert_checkpoint(source, tmp_path / "out.pth")


def test_missing_key_and_wrong_shape_are_named(tmp_path):
    state = authors_state_dict("tsm-last")
    del state["module.base_model.layer4.2.policy_net.gate_bn.running_var"]
    state["module.new_fc.bias"] = torch.zeros(10)
    source = write_checkpoint(tmp_path / RELEASED["tsm-last"]["file"], state)
    with pytest.raises(AdaFuseCheckpointError) as error:
        convert_checkpoint(source, tmp_path / "out.pth")
    assert "layer4.2.adafuse.policy_net.norm.running_var" in str(error.value)
    assert "new_fc.bias: (10,) vs (174,)" in str(error.value)


def test_inconsistent_shared_copies_are_refused(tmp_path):
    state = authors_state_dict("tsn")
    state["module.base_model.gate_fc0s.512_192.bias"] += 1.0
    source = write_checkpoint(tmp_path / RELEASED["tsn"]["file"], state)
    with pytest.raises(AdaFuseCheckpointError, match=r"gate_fc0s\.512_192\.bias"):
        convert_checkpoint(source, tmp_path / "out.pth")


def test_non_adafuse_truncated_and_malicious_files_are_refused(tmp_path):
    plain = write_checkpoint(tmp_path / "resnet.pth", {"module.conv1.weight": torch.zeros(1)})
    with pytest.raises(AdaFuseCheckpointError, match="not an AdaFuse checkpoint"):
        convert_checkpoint(plain, tmp_path / "out.pth")
    good = write_checkpoint(tmp_path / "good.pth", authors_state_dict("tsm-last"))
    truncated = tmp_path / RELEASED["tsm-last"]["file"]
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(AdaFuseCheckpointError, match="is the download complete"):
        convert_checkpoint(truncated, tmp_path / "out.pth")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pth.tar"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(AdaFuseCheckpointError, match="weights-only"):
        convert_checkpoint(evil, tmp_path / "out.pth")
    assert not marker.exists()
    with pytest.raises(AdaFuseCheckpointError, match="no checkpoint file"):
        convert_checkpoint(tmp_path / "missing.pth.tar", tmp_path / "out.pth")


def test_cli_convert_prints_the_summary_and_next_command(tmp_path, capsys):
    from adafuse_plugin.cli import main

    source = write_checkpoint(tmp_path / RELEASED["tsm"]["file"], authors_state_dict("tsm"))
    assert main(["convert", str(source), str(tmp_path / "out.pth")]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["variant"] == "tsm" and summary["expected_top1"] == 44.897
    assert f"adafuse test {summary['config']} {tmp_path / 'out.pth'}" in captured.err
