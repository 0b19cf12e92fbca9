"""`adafuse demo` runs end to end (mmengine Runner, mmaction2 video pipeline) and reports."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mmaction")
pytest.importorskip("matplotlib")

from adafuse_plugin.cli import main  # noqa: E402
from adafuse_plugin.demo import format_table  # noqa: E402

MODELS = ["TSN-R18", "TSM-R18", "AdaFuse-TSN-R18", "AdaFuse-TSM-R18", "AdaFuse-TSM+Last-R18"]


@pytest.mark.slow
def test_tiny_demo_trains_tests_and_writes_the_report(tmp_path, capsys):
    argv = [
        "demo",
        "--quick",
        "--epochs",
        "1",
        "--frames",
        "4",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--quiet",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out

    report = json.loads((tmp_path / "report.json").read_text())
    results = report["results"]
    assert [r["model"] for r in results] == MODELS
    assert report["settings"]["num_frames"] == 4 and report["settings"]["epochs"] == 1
    assert report["dataset"]["clips"]["test"] == 20
    assert format_table(results) in out
    for name in MODELS:
        assert any(line.startswith(name + " ") for line in out.splitlines()), name

    tsn, tsm, ada_tsn, ada_tsm, ada_last = results
    for plain in (tsn, tsm):
        assert plain["adaptive_gflops"] == plain["dense_gflops"]  # keep-only saves nothing
        assert plain["saving"] == 0.0
        assert plain["mix"] == {"keep": 1.0, "reuse": 0.0, "skip": 0.0}
    for row in (ada_tsn, ada_tsm, ada_last):
        assert row["dense_gflops"] == pytest.approx(tsn["dense_gflops"])  # same backbone
        assert 0 < row["adaptive_gflops"] < row["dense_gflops"]
        assert row["saving"] > 0
        assert sum(row["mix"].values()) == pytest.approx(1.0)
        assert row["params"] > tsn["params"]  # the policy networks
    for row in (ada_tsn, ada_tsm):
        assert len(row["blocks"]) == 8 and "layer4.1" in row["blocks"]
    assert sorted(ada_last["blocks"]) == ["layer4.0", "layer4.1"]  # the last stage only
    for row in results:
        assert 0.0 <= row["top1"] <= 1.0 and row["train_seconds"] > 0
        assert 0.0 <= row["within_pair"] <= 1.0  # the generated classes come in pairs
        # one entry per pair; the test split has as many clips of every class
        assert len(row["pairs"]) == 5  # the 10 motion classes
        assert sum(row["pairs"].values()) / len(row["pairs"]) == pytest.approx(row["within_pair"])

    for name in ("accuracy_vs_gflops.png", "policy_mix.png", "block_policies.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000, name  # a drawn figure, not an empty canvas
    assert report["plots"] == ["accuracy_vs_gflops.png", "policy_mix.png", "block_policies.png"]

    # The trained AdaFuse-TSN checkpoint loads safely (weights only) and streams causally:
    # per-frame logits averaged over the clip equal the recognizer's clip scores.
    import torch
    from mmengine.runner import Runner

    from adafuse_plugin.mmaction.streaming import load_work_dir, streaming_runner

    recognizer, cfg = load_work_dir(tmp_path / "work_dirs" / "AdaFuse-TSN-R18")
    batch = next(
        iter(
            Runner.build_dataloader(
                dict(cfg.test_dataloader, num_workers=0, persistent_workers=False)
            )
        )
    )
    with torch.no_grad():
        data = recognizer.data_preprocessor(batch, False)
        scores = recognizer(**data, mode="predict")[0].pred_scores.item
        runner = streaming_runner(recognizer, dense_fallback="never")
        prediction = runner.run(data["inputs"][0]).mean(0)
    torch.testing.assert_close(prediction.softmax(0), scores, atol=1e-5, rtol=1e-4)

    from adafuse_plugin.errors import AdaFuseConfigError

    tsm, _ = load_work_dir(tmp_path / "work_dirs" / "AdaFuse-TSM-R18")
    with pytest.raises(AdaFuseConfigError, match="only TSNHead"):
        streaming_runner(tsm)


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A video-list folder 'of a user': generated clips without our manifest, 3 classes."""
    import shutil

    from adafuse_plugin.demo.videos import generate_dataset

    root = tmp_path_factory.mktemp("videos")
    info = generate_dataset(root / "gen", 3, num_frames=8, frame_size=32, progress=False)
    folder = root / "mine"
    folder.mkdir()
    for split in ("train", "test"):
        lines = []
        for line in info.lists[split].read_text().splitlines():
            video, label = line.rsplit(" ", 1)
            if int(label) < 3:
                target = folder / video
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(info.root / video, target)
                lines.append(f"{video} {label}\n")
        (folder / f"{split}_list.txt").write_text("".join(lines))
    return folder


def test_video_folders_are_read_and_checked(user_folder, tmp_path):
    from adafuse_plugin.demo import read_video_folder

    data = read_video_folder(user_folder)
    assert data.num_classes == 3 and not data.paired_classes
    assert data.counts == {"train": 3, "test": 3}
    with pytest.raises(FileNotFoundError, match="train_list.txt is missing"):
        read_video_folder(tmp_path)
    (tmp_path / "train_list.txt").write_text("a.mp4 x\n")
    (tmp_path / "test_list.txt").write_text("a.mp4 0\n")
    with pytest.raises(ValueError, match=r"train_list.txt:1: expected '<video> <label>'"):
        read_video_folder(tmp_path)
    (tmp_path / "train_list.txt").write_text("a.mp4 0\n")
    with pytest.raises(FileNotFoundError, match=r"train_list.txt:1: no video file"):
        read_video_folder(tmp_path)


@pytest.mark.slow
def test_demo_runs_on_a_user_video_folder(user_folder, tmp_path):
    argv = ["demo", "--quick", "--epochs", "1", "--frames", "4", "--batch-size", "4"]
    argv += ["--workers", "0", "--quiet", "--output-dir", str(tmp_path), "--data", str(user_folder)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dataset"]["clips"] == {"train": 3, "test": 3}
    for row in report["results"]:
        assert row["within_pair"] is None  # a user's classes are not known to be pairs
    assert not (tmp_path / "data").exists()  # nothing generated


def test_backbone_init_loads_a_torchvision_state_dict_into_tsn_and_tsm(tmp_path):
    """Frame-level pretraining reaches TSN and TSM through mmaction2's own
    ``backbone.pretrained`` (as ImageNet weights do), every backbone tensor from the file;
    adapted models start from their ``load_from`` instead."""
    import torch
    import torchvision
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    import adafuse_plugin.mmaction  # noqa: F401  (registers AdaFuseRecognizer2D)
    from adafuse_plugin.demo import VARIANTS, DemoSettings, build_config

    init_default_scope("mmaction")
    torch.manual_seed(0)
    source = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if "fc." not in k}
    path = tmp_path / "frames.pth"
    torch.save(source, path)
    settings = DemoSettings(frame_size=32, num_frames=4, backbone_init=str(path))
    for variant in VARIANTS[:2]:  # TSN, TSM
        cfg = build_config(variant, settings, tmp_path, tmp_path / variant.name, num_classes=4)
        model = MODELS.build(cfg.model)
        model.init_weights()
        loaded = model.backbone.state_dict()
        shift = ".net" if variant.backbone == "tsm" else ""
        pairs = {
            "conv1.conv.weight": "conv1.weight",
            "conv1.bn.running_mean": "bn1.running_mean",
            f"layer2.1.conv1.conv{shift}.weight": "layer2.1.conv1.weight",
            "layer2.1.conv2.bn.weight": "layer2.1.bn2.weight",
            "layer3.0.downsample.conv.weight": "layer3.0.downsample.0.weight",
            "layer4.1.conv2.conv.weight": "layer4.1.conv2.weight",
        }
        for ours, theirs in pairs.items():
            assert torch.equal(loaded[ours], source[theirs]), (variant.name, ours)
    adapted = build_config(VARIANTS[2], settings, tmp_path, tmp_path / "a", 4, load_from=path)
    assert adapted.model.backbone.pretrained is None and adapted.load_from == str(path)


def test_pretrained_backbone_learns_at_its_own_lr(tmp_path):
    """With ``backbone_init`` the backbone's parameter groups get ``backbone_lr_mult`` times
    the lr, the head the lr itself, and a from-scratch AdaFuse model's policy nets keep
    their own multiplier; adapted models (``init_from``) are untouched."""
    import torch
    from mmaction.registry import MODELS
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    import adafuse_plugin.mmaction  # noqa: F401  (registers AdaFuseRecognizer2D)
    from adafuse_plugin.demo import VARIANTS, DemoSettings, Variant, build_config

    init_default_scope("mmaction")
    path = tmp_path / "frames.pth"
    torch.save({}, path)
    settings = DemoSettings(frame_size=32, num_frames=4, backbone_init=str(path), lr=1e-3)
    settings.backbone_lr_mult, settings.policy_lr_mult = 0.1, 10.0
    scratch = Variant("AdaFuse from scratch", "tsm", "adafuse")

    def lrs(variant, load_from=None):
        cfg = build_config(variant, settings, tmp_path, tmp_path / "w", 4, load_from=load_from)
        model = MODELS.build(cfg.model)
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
        by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        return {name: by_param[id(p)] for name, p in model.named_parameters()}

    for variant in (VARIANTS[1], scratch):
        for name, lr in lrs(variant).items():
            expected = 1e-3 if name.startswith("cls_head.") else 1e-4
            if ".adafuse." in name:
                expected = 1e-2
            assert lr == pytest.approx(expected), (variant.name, name)
    adapted = lrs(VARIANTS[3], load_from=path)  # AdaFuse-TSM: from its TSM, at adapt_lr
    base = settings.adapt_lr
    assert {lr / base for name, lr in adapted.items() if ".adafuse." not in name} == {1.0}
