"""Every 2D recognizer config of the installed mmaction2's model zoo becomes an AdaFuse
config by `to_adafuse`, builds, trains one step and predicts; configs that need optional
packages, and models without a convolutional block (refused by name), are listed with the
reason; anything else fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("mmaction")

from adafuse_plugin.errors import AdaFuseConfigError, AdaFusePatchError  # noqa: E402
from adafuse_plugin.mmaction.runner import load_config  # noqa: E402
from adafuse_plugin.mmaction.zoo import adafuse_zoo_config, clip_frames, to_adafuse  # noqa: E402


def zoo_configs() -> list[Path]:
    import mmaction

    root = Path(mmaction.__file__).parent / ".mim" / "configs" / "recognition"
    return sorted(root.rglob("*.py"))


def batch(frames: int, size: int = 64, clips: int = 2) -> dict:
    from mmaction.structures import ActionDataSample

    generator = torch.Generator().manual_seed(0)
    shape = (frames, 3, size, size)
    inputs = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)] * clips
    samples = [ActionDataSample().set_gt_labels(torch.tensor([i])) for i in range(clips)]
    return {"inputs": inputs, "data_samples": samples}


def test_a_3d_recognizer_is_refused_by_name():
    cfg = load_config(
        "mmaction::recognition/i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py"
    )
    with pytest.raises(AdaFuseConfigError, match="'Recognizer3D'.*2D recognizers"):
        to_adafuse(cfg)


@pytest.mark.slow
def test_every_2d_zoo_config_converts_trains_and_predicts(capsys):
    from mmaction.registry import MODELS
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    from adafuse_plugin.mmaction.audit import without_pretrained_weights
    from adafuse_plugin.mmaction.recognizer import AdaFuseRecognizer2D
    from adafuse_plugin.surgery import find_blocks

    torch.manual_seed(0)
    converted, skipped, refused = [], {}, {}
    for path in zoo_configs():
        cfg = load_config(path)
        if cfg.model.get("type") != "Recognizer2D":
            continue
        name = path.stem
        try:
            cfg = adafuse_zoo_config(path, flops_weight=0.1)
            init_default_scope("mmaction")
            model = MODELS.build(without_pretrained_weights(cfg.model))
            assert isinstance(model, AdaFuseRecognizer2D)
            frames = clip_frames(cfg)
            optim = build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=1e-3)))
            model.train()
            losses = model.train_step(batch(frames), optim)
            model.eval()
            with torch.no_grad():
                predictions = model.test_step(batch(frames, clips=1))
        except (ImportError, KeyError) as error:
            if isinstance(error, KeyError) and "registry" not in str(error):
                raise  # only a type that an optional package would register may be missing
            skipped[name] = f"{type(error).__name__}: {str(error)[:100]}"
            continue
        except AdaFusePatchError as error:
            # A clear refusal only where the plain model has no block AdaFuse applies to.
            assert "no supported residual block" in str(error), error
            plain = MODELS.build(without_pretrained_weights(load_config(path).model))
            assert find_blocks(plain) == [], name
            refused[name] = str(error)[:100]
            continue
        assert torch.isfinite(losses["loss"]) and "loss_flops" in losses, name
        assert torch.isfinite(predictions[0].pred_scores.item).all(), name
        converted.append(name)
    with capsys.disabled():
        print(f"\nconverted, trained one step and predicted: {len(converted)}")
        for name in converted:
            print(f"  {name}")
        print(f"skipped (optional packages): {len(skipped)}")
        for name, reason in skipped.items():
            print(f"  {name}: {reason}")
        print(f"refused by name (no convolutional block to gate): {len(refused)}")
        for name, reason in refused.items():
            print(f"  {name}: {reason}")
    assert len(converted) >= 20
