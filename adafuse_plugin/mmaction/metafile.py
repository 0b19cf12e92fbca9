"""mmaction2 model-zoo metadata of the shipped configs: ``configs/metafile.yml`` (mmaction2's
schema) and the model-zoo table of ``docs/model-zoo.md``, both written from here.

Training facts (batch, epochs, sampling, resolution, GPUs) are read from each config;
parameters and dense FLOPs are counted on the model each config builds (fvcore, one clip at
the config's test resolution, no pretrained weights fetched). Accuracy and adaptive FLOPs
are the paper's (8 frames, 224x224, one clip): none were reproduced here, and configs
without a paper result have none.

    python -m adafuse_plugin.mmaction.metafile           # rewrite both files
    python -m adafuse_plugin.mmaction.metafile --check   # exit 1 if either is stale
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

#: The paper's table (Something V1 / V2, ResNet-50, 8 frames, 224x224, one clip):
#: (model, dataset) -> (top-1 %, adaptive GFLOPs per clip).
PAPER_RESULTS: dict[tuple[str, str], tuple[float, float]] = {
    ("tsn", "sthv1"): (19.7, 33.2),
    ("tsm", "sthv1"): (45.6, 33.2),
    ("adafuse-tsn", "sthv1"): (41.9, 22.1),
    ("adafuse-tsm", "sthv1"): (44.9, 19.1),
    ("adafuse-tsm-last", "sthv1"): (46.8, 31.5),
    ("tsn", "sthv2"): (27.8, 33.2),
    ("tsm", "sthv2"): (59.1, 33.2),
    ("adafuse-tsn", "sthv2"): (56.8, 18.1),
    ("adafuse-tsm", "sthv2"): (58.3, 19.5),
    ("adafuse-tsm-last", "sthv2"): (59.8, 31.3),
}
MODELS = {
    "adafuse-tsm-last": "AdaFuse-TSM+Last",
    "adafuse-tsm": "AdaFuse-TSM",
    "adafuse-tsn": "AdaFuse-TSN",
    "tsm": "TSM",
    "tsn": "TSN",
}
DATASETS = {
    "sthv1": "Something-Something V1",
    "sthv2": "Something-Something V2",
    "jester": "Jester",
    "mini-kinetics": "Mini-Kinetics",
    "synthetic": "generated videos (adafuse_plugin.demo.videos)",
}
#: mmaction2's config naming: {model}_{backbone}_{gpus}xb{batch}-{sampling}-{epochs}e_{data}-rgb
_NAME = re.compile(
    r"(?P<model>[a-z-]+)_(?P<backbone>[a-z0-9-]+)_(?P<gpus>\d+)xb\d+-"
    r"(?P<sampling>\d+x\d+x\d+)-\d+e_(?P<data>[a-z-]+?\d?)-rgb"
)
_ROOT = Path(__file__).resolve().parents[1]
METAFILE = _ROOT / "configs" / "metafile.yml"
MODEL_ZOO = _ROOT.parent / "docs" / "model-zoo.md"


def _views(cfg: Any) -> str:
    """mmaction2's testing protocol words: clips x crops of the test pipeline."""
    from .runner import views_per_video

    pipeline = cfg.test_dataloader.dataset.pipeline
    crops = next((s["type"] for s in pipeline if s["type"] in ("ThreeCrop", "TenCrop")), None)
    total = views_per_video(pipeline, _frames(cfg))
    crop_count = {"ThreeCrop": 3, "TenCrop": 10}.get(crops or "", 1)
    return f"{total // crop_count} clip x {crop_count} crop"


def _frames(cfg: Any) -> int:
    """Frames per clip: the AdaFuse settings', else the plain model's test sampling."""
    from .audit import _pipeline_frames

    adafuse = cfg.model.get("adafuse") or {}
    return adafuse.get("num_segments") or _pipeline_frames(cfg)


def entry(config: Path) -> dict[str, Any]:
    """The metafile entry of one shipped config."""
    from ..summary import parameter_counts
    from .audit import build_model, dense_backbone_flops
    from .runner import load_config

    name = config.stem
    parts = _NAME.fullmatch(name)
    if parts is None:
        raise ValueError(f"{config}: not an mmaction2-style config name")
    cfg = load_config(config)
    model = build_model(cfg)
    frames = _frames(cfg)
    size = (cfg.model.get("adafuse") or {}).get("input_size", 224)
    dense = dense_backbone_flops(model.get_submodule("backbone"), (frames, 3, size, size))
    params = parameter_counts(model)
    backbone = cfg.model.backbone
    architecture = backbone["type"].removeprefix("timm.") + str(backbone.get("depth", ""))
    data = parts["data"]
    metadata = {
        "Architecture": architecture,
        "Batch Size": cfg.train_dataloader.batch_size,
        "Epochs": cfg.train_cfg.max_epochs,
        "FLOPs": f"{dense / 1e9:.1f}G",
        "Parameters": f"{params['total'] / 1e6:.1f}M",
        "Pretrained": "ImageNet" if backbone.get("pretrained") else "None",
        "Resolution": f"{size}x{size}",
        "Frame Sampling": parts["sampling"],
        "Testing Protocol": _views(cfg),
        "Training Data": DATASETS[data],
        "Training Resources": f"{parts['gpus']} GPU" + ("s" if parts["gpus"] != "1" else ""),
    }
    item: dict[str, Any] = {
        "Name": name,
        "Config": f"adafuse_plugin/configs/{config.name}",
        "In Collection": "AdaFuse",
        "Metadata": metadata,
        "Modality": "RGB",
    }
    paper = PAPER_RESULTS.get((parts["model"], data))
    if paper is not None and parts["backbone"] == "r50":
        metadata["Adaptive FLOPs (paper)"] = f"{paper[1]}G"
        item["Results"] = [
            {
                "Dataset": DATASETS[data],
                "Task": "Action Recognition",
                "Metrics": {"Top 1 Accuracy": paper[0]},
                "Source": "paper (not reproduced here)",
            }
        ]
    return item


def model_index(configs: list[Path]) -> dict[str, Any]:
    """The whole metafile: one collection, one entry per config, in name order."""
    return {
        "Collections": [
            {
                "Name": "AdaFuse",
                "README": "docs/model-zoo.md",
                "Paper": {
                    "URL": "https://github.com/mengyuest/AdaFuse",
                    "Title": "AdaFuse: Adaptive Temporal Fusion Network for Efficient Action "
                    "Recognition (ICLR 2021)",
                },
            }
        ],
        "Models": [entry(c) for c in sorted(configs, key=lambda c: c.name)],
    }


def markdown(index: dict[str, Any]) -> str:
    """The model-zoo table, one row per config, mmaction2's columns."""
    from tabulate import tabulate

    rows = []
    for item in index["Models"]:
        meta = item["Metadata"]
        results = item.get("Results") or [{"Metrics": {}}]
        top1 = results[0]["Metrics"].get("Top 1 Accuracy", "-")
        rows.append(
            [
                MODELS[_NAME.fullmatch(item["Name"])["model"]],  # type: ignore[index]
                meta["Training Data"].split(" (")[0],
                meta["Frame Sampling"],
                meta["Resolution"],
                meta["Training Resources"],
                meta["Architecture"],
                meta["Pretrained"],
                top1,
                meta["Testing Protocol"],
                meta["FLOPs"],
                meta.get("Adaptive FLOPs (paper)", "-"),
                meta["Parameters"],
                f"[config](../{item['Config']})",
            ]
        )
    headers = [
        "model",
        "dataset",
        "frame sampling",
        "resolution",
        "gpus",
        "backbone",
        "pretrain",
        "top-1 (paper)",
        "testing protocol",
        "FLOPs (dense)",
        "FLOPs (adaptive, paper)",
        "params",
        "config",
    ]
    return tabulate(rows, headers, tablefmt="github")


def write(check: bool = False) -> list[Path]:
    """Write (or, with ``check``, compare) the metafile and the model-zoo table; the stale
    files."""
    import yaml

    if not MODEL_ZOO.parent.is_dir():
        raise SystemExit(f"{MODEL_ZOO.parent} does not exist: run this from a source checkout")
    configs = sorted(p for p in (_ROOT / "configs").glob("*.py"))
    index = model_index(configs)
    texts = {
        METAFILE: "# Written by python -m adafuse_plugin.mmaction.metafile; do not edit.\n"
        + yaml.safe_dump(index, sort_keys=False, allow_unicode=True, width=100),
        MODEL_ZOO: (
            "# Model zoo\n\nThe shipped configs (`adafuse_plugin/configs/`, mmaction2's "
            "`metafile.yml` schema in `adafuse_plugin/configs/metafile.yml`), written by "
            "`python -m adafuse_plugin.mmaction.metafile`. FLOPs (dense) and params are counted "
            "on the model each config builds (fvcore multiply-adds of the backbone, one clip of "
            "`num_segments` frames at the test resolution); top-1 and adaptive FLOPs are the "
            "paper's (8 frames, 224x224, one clip), not reproduced here: no dataset or GPU "
            "cluster was at hand. To check them with the authors' released models see "
            "[reproduce-released-models.md](reproduce-released-models.md).\n\n"
            + markdown(index)
            + "\n"
        ),
    }
    stale = [path for path, text in texts.items() if not path.is_file() or path.read_text() != text]
    if not check:
        for path in stale:
            path.write_text(texts[path])
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args()
    from . import apply_compat_fixes

    apply_compat_fixes()
    stale = write(check=args.check)
    for path in stale:
        print(f"{'stale' if args.check else 'written'}: {path}")
    raise SystemExit(1 if args.check and stale else 0)


if __name__ == "__main__":
    main()
