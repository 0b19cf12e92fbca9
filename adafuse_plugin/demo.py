"""``adafuse demo``: TSN vs AdaFuse ResNet-18 on generated temporal-reasoning videos, on CPU.

Generates (and caches) the synthetic dataset, decodes the real video files, trains each
model with the FLOPs-regularised loss, evaluates top-1 and audits dense vs adaptive FLOPs
over the whole test split, then prints a table and writes ``report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import AdaFuseConfig
from .flops import audit_flops
from .loss import AdaFuseFlopsLoss, consensus
from .surgery import patch_model

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1) * 255


@dataclasses.dataclass
class DemoSettings:
    """Budget of one demo run."""

    size: str = "small"
    epochs: int = 10
    num_frames: int = 8
    frame_size: int = 64
    batch_clips: int = 8
    lr: float = 0.01
    flops_weight: float = 0.1


def decode_split(list_file: Path, root: Path, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every video of an annotation list to (N, T, 3, H, W) uint8 and (N,) labels,
    sampling ``num_frames`` frames at TSN segment centres."""
    import cv2

    clips, labels = [], []
    for line in list_file.read_text().splitlines():
        path, label = line.rsplit(" ", 1)
        capture = cv2.VideoCapture(str(root / path))
        frames = []
        ok, frame = capture.read()
        while ok:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            ok, frame = capture.read()
        capture.release()
        if not frames:
            raise RuntimeError(f"could not decode {root / path}")
        index = ((np.arange(num_frames) + 0.5) * len(frames) / num_frames).astype(int)
        clips.append(np.stack([frames[i] for i in index]))
        labels.append(int(label))
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3), torch.tensor(labels)


def _frames(clips: torch.Tensor) -> torch.Tensor:
    return ((clips.float() - MEAN) / STD).flatten(0, 1)


def train_and_evaluate(
    name: str,
    config: AdaFuseConfig,
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    settings: DemoSettings,
    num_classes: int,
) -> dict:
    """Train one ResNet-18 variant, then measure top-1 and FLOPs on the test split."""
    import timm
    from tqdm.auto import tqdm

    torch.manual_seed(0)
    model = patch_model(timm.create_model("resnet18", num_classes=num_classes), config)
    shape = (settings.num_frames, 3, settings.frame_size, settings.frame_size)
    flops_loss = AdaFuseFlopsLoss(model, input_shape=shape, weight=settings.flops_weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9,
                                weight_decay=5e-4)  # fmt: skip
    clips, labels = data["train"]
    steps = settings.epochs * -(-len(clips) // settings.batch_clips)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=steps)
    start = time.perf_counter()
    with tqdm(total=steps, desc=f"train {name}", unit="step") as bar:
        for _ in range(settings.epochs):
            model.train()
            for batch in torch.randperm(len(clips)).split(settings.batch_clips):
                logits = consensus(model(_frames(clips[batch])), settings.num_frames)
                loss = F.cross_entropy(logits, labels[batch])
                if config.policy != "keep":
                    loss = loss + flops_loss()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    train_seconds = time.perf_counter() - start
    test_clips, test_labels = data["test"]
    model.eval()
    loader = [(_frames(c), None) for c in test_clips.split(settings.batch_clips)]
    report = audit_flops(model, shape, loader=loader, progress=False)
    with torch.no_grad():
        predictions = torch.cat([consensus(model(f), settings.num_frames) for f, _ in loader])
    return {
        "model": name,
        "top1": float((predictions.argmax(1) == test_labels).float().mean()),
        "dense_gflops": report.dense / 1e9,
        "adaptive_gflops": report.adaptive / 1e9,
        "saving": report.saving,
        "mix": report.mix,
        "train_seconds": train_seconds,
    }


def format_table(results: list[dict]) -> str:
    """The demo's result table."""
    header = (
        f"{'model':<16}{'top-1':>7}{'dense GF':>10}{'adaptive GF':>13}{'saving':>8}"
        "  keep/reuse/skip"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        mix = "/".join(f"{r['mix'][a]:.0%}" for a in ("keep", "reuse", "skip"))
        lines.append(
            f"{r['model']:<16}{r['top1']:>7.1%}{r['dense_gflops']:>10.3f}"
            f"{r['adaptive_gflops']:>13.3f}{r['saving']:>8.1%}  {mix}"
        )
    return "\n".join(lines)


def run_demo(
    output_dir: str | Path = "adafuse_demo_output",
    quick: bool = False,
    epochs: int | None = None,
    size: str | None = None,
) -> list[dict]:
    """Generate data, train TSN-R18 and AdaFuse-R18, print and save the comparison."""
    from .synthetic_videos import CLASSES, generate_dataset

    settings = DemoSettings(size="tiny", epochs=3) if quick else DemoSettings()
    settings = dataclasses.replace(
        settings, epochs=epochs or settings.epochs, size=size or settings.size
    )
    output_dir = Path(output_dir)
    info = generate_dataset(output_dir / "data", size=settings.size, num_frames=16,
                            frame_size=settings.frame_size)  # fmt: skip
    data = {
        split: decode_split(info.lists[split], info.root, settings.num_frames)
        for split in ("train", "test")
    }
    variants = {
        "TSN-R18": AdaFuseConfig(num_segments=settings.num_frames, policy="keep"),
        "AdaFuse-TSN-R18": AdaFuseConfig(num_segments=settings.num_frames),
    }
    results = [
        train_and_evaluate(name, config, data, settings, len(CLASSES))
        for name, config in variants.items()
    ]
    table = format_table(results)
    print(table)
    (output_dir / "report.json").write_text(
        json.dumps({"settings": dataclasses.asdict(settings), "results": results}, indent=2)
    )
    print(f"report written to {output_dir / 'report.json'}")
    return results
