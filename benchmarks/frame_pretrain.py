"""Frame-level pretraining, the stand-in for ImageNet: a ResNet-18 learns the generated actor's
orientation from still frames, then TSN and TSM start from it as mmaction2 starts them
from ImageNet.

The recipe's other stand-in (TSN / TSM trained from scratch on the videos themselves)
gives no orientation-selective features, and no model learns the rotation pair
(docs/results.md). Here a torchvision ResNet-18 classifies still scenes
(`sample_still_spec`: the actor at one of 12 angle bins among wandering distractors),
rendered on the fly so that no image is seen twice (ImageNet is large; a fixed set of a
few thousand frames is memorised), normalised like the synthetic config's data
preprocessor. It is saved as a torchvision state dict without the classifier, which
mmaction2's ``ResNet`` and ``ResNetTSM`` load through ``backbone.pretrained``, exactly
as they load ``torchvision://resnet18``: ``benchmarks/recipe.py --backbone-init FILE``.

    python benchmarks/frame_pretrain.py --out frame_pretrain   # 46 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

from adafuse_plugin.demo import config_dir
from adafuse_plugin.demo.run import SYNTHETIC_CONFIG
from adafuse_plugin.demo.videos import ORIENTATION_CLASSES, render_clip, sample_still_spec
from adafuse_plugin.mmaction.runner import load_config


def normaliser() -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (0-255 scale) of the synthetic config's data preprocessor."""
    preprocessor = load_config(config_dir() / SYNTHETIC_CONFIG).model.data_preprocessor
    return (
        torch.tensor(preprocessor.mean).view(1, 3, 1, 1),
        torch.tensor(preprocessor.std).view(1, 3, 1, 1),
    )


def still_batch(
    rng: np.random.Generator, count: int, frame_size: int, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` freshly rendered still frames (normalised, NCHW) and their labels."""
    labels = rng.integers(len(ORIENTATION_CLASSES), size=count)
    frames = np.stack(
        [render_clip(sample_still_spec(int(label), rng, frame_size))[0] for label in labels]
    )
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    return (images - mean) / std, torch.from_numpy(labels)


def accuracy(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    model.train()
    return correct / sum(len(y) for _, y in batches)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, steps: int, warmup: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's schedule per step: linear warm-up from 4 %, then cosine decay to 0."""
    ramp = max(1, round(warmup * steps))
    lr_scheduler = torch.optim.lr_scheduler
    ramp_up = lr_scheduler.LinearLR(optimizer, start_factor=0.04, total_iters=ramp)
    decay = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - ramp))
    return lr_scheduler.SequentialLR(optimizer, [ramp_up, decay], milestones=[ramp])


def plot(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tested = [entry for entry in log if entry["test_top1"] is not None]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([e["step"] for e in log], [e["loss"] for e in log], color="0.6", label="loss")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    other = axis.twinx()
    steps, top1 = [e["step"] for e in tested], [100 * e["test_top1"] for e in tested]
    other.plot(steps, top1, "o-", color="C0", label="test top-1")
    other.axhline(100 / len(ORIENTATION_CLASSES), color="C0", ls=":", label="chance")
    other.set_ylabel("test top-1 %")
    figure.legend(loc="upper center", ncol=3, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--frame-size", type=int, default=64, help="frames are SxS pixels")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps")
    parser.add_argument("--test-frames", type=int, default=600, help="fixed held-out stills")
    parser.add_argument("--test-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="where the model trains (cuda: a GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("frame_pretrain"))
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1 or args.test_frames < 1:
        parser.error("--steps, --batch-size and --test-frames must be >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    mean, std = normaliser()
    device = torch.device(args.device)
    model = torchvision.models.resnet18(num_classes=len(ORIENTATION_CLASSES)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = warmup_cosine(optimizer, args.steps, args.warmup)
    # Held-out stills from a stream of their own (seed offset), the same for every run.
    test_rng = np.random.default_rng([args.seed, 1])
    chunks = [min(100, args.test_frames - start) for start in range(0, args.test_frames, 100)]
    test = []
    for count in chunks:
        images, labels = still_batch(test_rng, count, args.frame_size, mean, std)
        test.append((images.to(device), labels.to(device)))
    rng = np.random.default_rng([args.seed, 0])
    log: list[dict] = []
    with tqdm(range(1, args.steps + 1), desc="frame pretraining", unit="step") as bar:
        for step in bar:
            images, labels = still_batch(rng, args.batch_size, args.frame_size, mean, std)
            lr = schedule.get_last_lr()[0]
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            tested = step % args.test_every == 0 or step == args.steps
            top1 = accuracy(model, test) if tested else None
            log.append(dict(step=step, lr=lr, loss=loss.item(), test_top1=top1))
            bar.set_postfix(
                loss=f"{loss.item():.3f}", **({"test": f"{top1:.1%}"} if tested else {})
            )
    args.out.mkdir(parents=True, exist_ok=True)
    backbone = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    torch.save(backbone, args.out / "frames_resnet18.pth")
    (args.out / "log.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in log))
    plot(log, args.out / "frame_pretrain.png")
    final = log[-1]["test_top1"]
    print(
        f"test top-1 {final:.1%} over {len(ORIENTATION_CLASSES)} orientation bins "
        f"(chance {1 / len(ORIENTATION_CLASSES):.1%}); written: {args.out / 'frames_resnet18.pth'}"
    )


if __name__ == "__main__":
    main()
