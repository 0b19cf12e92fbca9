"""The configs in mmaction_configs/: they build, match the paper's sizes, reject bad values."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmaction")

from adafuse_plugin import AdaFuseConfigError  # noqa: E402
from adafuse_plugin.mmaction import AdaFuseRecognizer2D, load_config, validate_config  # noqa: E402
from adafuse_plugin.mmaction.audit import dense_backbone_flops  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "mmaction_configs"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.py"))
CLASSES = {"sthv1": 174, "sthv2": 174, "jester": 27, "mini-kinetics": 200, "synthetic": 10}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def config(name: str):
    cfg = load_config(CONFIG_DIR / name)
    if cfg.model.backbone.type.startswith("timm."):
        cfg.model.backbone.pretrained = False  # no downloads in tests
    return cfg


def build(cfg) -> torch.nn.Module:
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope("mmaction")
    return MODELS.build(copy.deepcopy(cfg.model))


def num_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def test_there_is_a_config_per_model_and_dataset():
    models = {
        "tsn_r50",
        "tsm_r50",
        "adafuse-tsn_r18",
        "adafuse-tsn_r50",
        "adafuse-tsm_r50",
        "adafuse-tsm-last_r50",
        "adafuse-tsn_efficientnet-b0",
    }
    for model in models:
        for dataset in ("sthv1", "sthv2", "jester", "mini-kinetics"):
            assert f"{model}_8xb8-1x1x8-50e_{dataset}-rgb.py" in CONFIGS


#: Configs built in the fast loop (one per model family); the others in the full suite.
FAST_CONFIGS = {
    "adafuse-tsm_r18_1xb2-1x1x4-2e_synthetic-rgb.py",
    "adafuse-tsn_r18_8xb8-1x1x8-50e_sthv1-rgb.py",
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in FAST_CONFIGS else pytest.mark.slow) for n in CONFIGS],
)
def test_config_builds_model_and_pipelines(name):
    from mmaction.registry import TRANSFORMS
    from mmengine.dataset import Compose

    cfg = config(name)
    model = build(cfg)
    dataset = name.rsplit("_", 1)[1].removesuffix("-rgb.py")
    assert model.cls_head.num_classes == CLASSES[dataset]
    assert isinstance(model, AdaFuseRecognizer2D) == name.startswith("adafuse")
    for split in ("train", "val", "test"):
        Compose([TRANSFORMS.build(step) for step in cfg[f"{split}_dataloader"].dataset.pipeline])
    if name.startswith("adafuse"):
        assert cfg.model.adafuse.num_segments == 8 or "synthetic" in name
        assert {h.type for h in cfg.custom_hooks} == {"AdaFuseHook"}
        assert cfg.val_evaluator.type == "AdaFuseMetric"
    if "sthv1" in name and name.startswith("adafuse"):
        assert (cfg.model.adafuse.flops_weight, cfg.model.adafuse.flops_mode) == (0.125, "upb")
    if "sthv2" in name and name.startswith("adafuse"):
        assert (cfg.model.adafuse.flops_weight, cfg.model.adafuse.flops_mode) == (0.075, "real")


@pytest.fixture(scope="module")
def sample_video(tmp_path_factory) -> dict[str, Path]:
    """One generated clip as a video file and as a folder of 1-based {:05}.jpg frames."""
    import cv2

    from adafuse_plugin.demo.videos import generate_dataset

    root = tmp_path_factory.mktemp("sample")
    info = generate_dataset(root / "data", size="tiny", frame_size=64, progress=False)
    video = info.root / info.lists["train"].read_text().split()[0]
    frames = root / "frames"
    frames.mkdir()
    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    while ok:
        index = len(list(frames.iterdir())) + 1
        cv2.imwrite(str(frames / f"{index:05}.jpg"), frame)
        ok, frame = capture.read()
    return {"video": video, "frames": frames}


@pytest.mark.parametrize("dataset", ["sthv1", "sthv2", "jester", "mini-kinetics"])
def test_dataset_pipelines_run_on_real_data(dataset, sample_video):
    """Every split's pipeline decodes a real clip into 8 frames of 224x224 (building the
    transforms alone would not catch, e.g., sampling before the decoder is opened)."""
    from mmaction.registry import TRANSFORMS
    from mmengine.dataset import Compose

    cfg = load_config(CONFIG_DIR / "_base_" / "datasets" / f"{dataset}.py")
    for split in ("train", "val", "test"):
        dataset_cfg = cfg[f"{split}_dataloader"].dataset
        pipeline = Compose([TRANSFORMS.build(step) for step in dataset_cfg.pipeline])
        if dataset_cfg.type == "VideoDataset":
            sample = dict(filename=str(sample_video["video"]), start_index=0)
        else:
            total = len(list(sample_video["frames"].iterdir()))
            sample = dict(
                frame_dir=str(sample_video["frames"]),
                total_frames=total,
                start_index=1,
                filename_tmpl=dataset_cfg.filename_tmpl,
            )
        packed = pipeline(dict(sample, label=0, modality="RGB"))
        assert packed["inputs"].shape == (8, 3, 224, 224), (dataset, split)


@pytest.mark.parametrize(
    "name, millions",
    [
        ("adafuse-tsn_r50_8xb8-1x1x8-50e_sthv1-rgb.py", 37.7),
        ("adafuse-tsm_r50_8xb8-1x1x8-50e_sthv1-rgb.py", 37.7),
        ("adafuse-tsm-last_r50_8xb8-1x1x8-50e_sthv1-rgb.py", 39.1),
    ],
)
def test_parameter_counts_match_the_paper(name, millions):
    assert round(num_params(build(config(name))), 1) == millions


@pytest.mark.parametrize(
    "name", ["tsn_r50_8xb8-1x1x8-50e_sthv1-rgb.py", "tsm_r50_8xb8-1x1x8-50e_sthv1-rgb.py"]
)
@pytest.mark.slow
def test_dense_flops_of_r50_baselines_match_the_paper(name):
    model = build(config(name))
    gflops = dense_backbone_flops(model.backbone, (8, 3, 224, 224)) / 1e9
    assert gflops == pytest.approx(33.2, rel=0.015)


@pytest.mark.slow
def test_adafuse_dense_flops_equal_the_baseline():
    model = build(config("adafuse-tsn_r50_8xb8-1x1x8-50e_sthv1-rgb.py"))
    report = model.flops_report()
    baseline = dense_backbone_flops(
        build(config("tsn_r50_8xb8-1x1x8-50e_sthv1-rgb.py")).backbone, (8, 3, 224, 224)
    )
    assert report.dense == pytest.approx(baseline, rel=1e-6)
    assert report.policy / report.dense < 0.01


# -- bad values fail at build time ----------------------------------------------------
TINY = "adafuse-tsm_r18_1xb2-1x1x4-2e_synthetic-rgb.py"


def test_unknown_block_selection_is_rejected():
    cfg = config(TINY)
    cfg.model.adafuse.stages = (7,)
    with pytest.raises(AdaFuseConfigError, match=r"stages=\[7\] is out of range"):
        build(cfg)
    cfg.model.adafuse.stages = None
    cfg.model.adafuse.include = ("layer9.*",)
    with pytest.raises(AdaFuseConfigError, match="matches none"):
        build(cfg)


def test_num_segments_must_match_backbone_and_head():
    cfg = config(TINY)
    cfg.model.adafuse.num_segments = 8
    with pytest.raises(AdaFuseConfigError, match="backbone.num_segments=4"):
        build(cfg)


def test_num_segments_must_match_the_pipelines(tmp_path):
    cfg = config(TINY)
    for split in ("train", "val", "test"):
        cfg[f"{split}_dataloader"].dataset.ann_file = str(tmp_path / "list.txt")
        cfg[f"{split}_dataloader"].dataset.data_prefix.video = str(tmp_path)
    (tmp_path / "list.txt").write_text("")
    validate_config(cfg)
    cfg.val_dataloader.dataset.pipeline[1].num_clips = 6
    with pytest.raises(AdaFuseConfigError, match=r"val_dataloader.*num_clips=6 one-frame"):
        validate_config(cfg)
    cfg.val_dataloader.dataset.pipeline[1].num_clips = 4
    cfg.val_dataloader.dataset.pipeline[1].twice_sample = True  # 2 test views: fine
    validate_config(cfg)
    cfg.train_dataloader.dataset.pipeline[1].twice_sample = True
    with pytest.raises(AdaFuseConfigError, match=r"train_dataloader.*2 views"):
        validate_config(cfg)


def test_missing_data_root_is_reported():
    cfg = config("adafuse-tsn_r50_8xb8-1x1x8-50e_sthv1-rgb.py")
    with pytest.raises(AdaFuseConfigError, match="sthv1_train_list_rawframes.txt' does not exist"):
        validate_config(cfg)


def test_missing_num_segments_and_bad_loss_mode_are_rejected():
    cfg = config(TINY)
    cfg.model.adafuse.flops_mode = "fast"
    with pytest.raises(AdaFuseConfigError, match="flops_mode must be 'real' or 'upb'"):
        build(cfg)
    cfg.model.adafuse.flops_mode = "real"
    del cfg.model.adafuse["num_segments"]
    with pytest.raises(AdaFuseConfigError, match="needs num_segments"):
        build(cfg)


@pytest.mark.slow
def test_cli_audit_accepts_configs(capsys):
    import json

    from adafuse_plugin.cli import main

    assert main(["audit", str(CONFIG_DIR / TINY), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "AdaFuseRecognizer2D" and report["frames"] == 4
    assert len(report["blocks"]) == 8 and report["adaptive"] is None  # no data: dense only
    assert main(["audit", str(CONFIG_DIR / "tsn_r50_8xb8-1x1x8-50e_sthv1-rgb.py")]) == 0
    assert "Recognizer2D: dense 32.87 GFLOPs per clip of 8 frames" in capsys.readouterr().out
    assert main(["audit", "resnet18", "--data", "val"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_inference_recognizer_on_a_video_with_every_config(name, sample_video):
    """mmaction2's own inference API reads the top-level test_pipeline (video files)."""
    from mmaction.apis import inference_recognizer, init_recognizer

    cfg = config(name)
    model = init_recognizer(cfg, device="cpu")
    result = inference_recognizer(model, str(sample_video["video"]))
    classes = next(v for k, v in CLASSES.items() if f"_{k}-rgb" in name)
    scores = result.pred_scores.item
    assert scores.shape == (classes,) and torch.isfinite(scores).all()


# -- model-zoo metadata ---------------------------------------------------------------
def test_metafile_lists_every_config_with_the_papers_numbers():
    """configs/metafile.yml (mmaction2's schema): one entry per shipped config, its file
    there, parameters as the paper reports them, results only where the paper has them."""
    import yaml

    index = yaml.safe_load((CONFIG_DIR / "metafile.yml").read_text())
    models = {m["Name"]: m for m in index["Models"]}
    assert sorted(f"{name}.py" for name in models) == CONFIGS
    for item in models.values():
        assert (REPO / item["Config"]).is_file()
        assert item["In Collection"] == "AdaFuse"
    ada = models["adafuse-tsm-last_r50_8xb8-1x1x8-50e_sthv1-rgb"]
    assert ada["Metadata"]["Parameters"] == "39.1M" and ada["Metadata"]["Epochs"] == 50
    assert ada["Results"][0]["Metrics"]["Top 1 Accuracy"] == 46.8
    assert (
        models["tsm_r50_8xb8-1x1x8-50e_sthv2-rgb"]["Metadata"]["FLOPs"] == "32.9G"
    )  # fvcore, 8 x 224: the reference 4.11 G per frame
    assert "Results" not in models["adafuse-tsn_r18_8xb8-1x1x8-50e_jester-rgb"]


@pytest.mark.slow
def test_metafile_and_model_zoo_table_are_current():
    """Both files equal what `python -m adafuse_plugin.mmaction.metafile` writes now."""
    from adafuse_plugin.mmaction.metafile import write

    assert write(check=True) == []


@pytest.mark.parametrize(
    "name",
    [
        "adafuse-tsn_r18_8xb8-1x1x8-50e_sthv2-rgb.py",
        "adafuse-tsm_r18_1xb2-1x1x4-2e_synthetic-rgb.py",
    ],
)
def test_webcam_frames_are_preprocessed_as_in_testing(name, sample_video):
    """`frame_transform` (cv2 frames of a capture) equals mmaction2's own test pipeline and
    data preprocessor on the same frames of the same video."""
    import cv2
    from mmaction.registry import MODELS
    from mmengine.dataset import Compose
    from mmengine.registry import init_default_scope

    from adafuse_plugin.mmaction.streaming import frame_transform

    init_default_scope("mmaction")
    cfg = config(name)
    video = str(sample_video["video"])
    sample = Compose(cfg.test_pipeline)(
        dict(filename=video, label=0, start_index=0, modality="RGB")
    )
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    expected = preprocessor(dict(inputs=[sample["inputs"]], data_samples=[sample["data_samples"]]))
    expected = expected["inputs"][0]  # (views * T, 3, H, W), normalised
    capture = cv2.VideoCapture(video)
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    transform = frame_transform(cfg)
    indices = Compose(cfg.test_pipeline[:2])(dict(filename=video, start_index=0))["frame_inds"]
    got = torch.stack([transform(frames[i]) for i in indices])
    assert got.shape == expected.shape
    assert torch.equal(got, expected)  # the same decoder (ffmpeg) and the same transforms
