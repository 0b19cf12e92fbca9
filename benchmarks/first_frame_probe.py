"""Can one frame, or the unordered frames, tell a class from its time-reversed partner?

For each generated family and start phase, a small CNN is trained on the first frame of
each clip alone, and another on the mean of all frames (an order-free summary), and both
are tested on held-out clips: top-1 over all classes and within-pair accuracy (class vs its
partner, 50 % is chance). A fair dataset leaves both near chance within pairs: only the
order of the frames tells the partners apart.

    python benchmarks/first_frame_probe.py --out first_frame_probe.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adafuse_plugin.demo.videos import FAMILIES, render_clip, sample_spec


def clips(family: str, phase: str, per_class: int, seed: int, size: int) -> tuple:
    """(first frames, mean frames, labels) of ``per_class`` clips of every class."""
    first, mean, labels = [], [], []
    for label in range(len(FAMILIES[family])):
        for index in range(per_class):
            rng = np.random.default_rng([seed, label, index])
            video = render_clip(sample_spec(label, rng, 16, size, phase, family))
            frames = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255 - 0.5
            first.append(frames[0])
            mean.append(frames.mean(0))
            labels.append(label)
    return torch.stack(first), torch.stack(mean), torch.tensor(labels)


def probe(train: torch.Tensor, labels: torch.Tensor, classes: int, epochs: int) -> nn.Module:
    """A small CNN trained on single images (AdamW, shuffled minibatches of 64)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for width_in, width_out in ((3, 32), (32, 64), (64, 64)):
        layers += [nn.Conv2d(width_in, width_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    # Flattened, not pooled: where the object is matters (a rightward mover starts left).
    net = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(classes))
    net(train[:1])  # materialise the lazy layer
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for batch in torch.randperm(len(train)).split(64):
            loss = F.cross_entropy(net(train[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def accuracies(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and within-pair accuracy (the true class scores above its partner ``l ^ 1``)."""
    with torch.no_grad():
        scores = net(images)
    top1 = (scores.argmax(1) == labels).float().mean().item()
    true, partner = scores.gather(1, labels[:, None]), scores.gather(1, (labels ^ 1)[:, None])
    return top1, (true > partner).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=120, help="training clips per class")
    parser.add_argument("--test", type=int, default=40, help="test clips per class")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [
        "| family | phase | input | top-1 % | within-pair % |",
        "|---|---|---|---|---|",
    ]
    for family, phase in (("motion", "fixed"), ("motion", "random"), ("cycles", "random")):
        classes = len(FAMILIES[family])
        train = clips(family, phase, args.train, 0, args.size)
        test = clips(family, phase, args.test, 1, args.size)
        for index, name in ((0, "first frame"), (1, "mean of frames")):
            net = probe(train[index], train[2], classes, args.epochs)
            top1, pair = accuracies(net, test[index], test[2])
            rows.append(f"| {family} | {phase} | {name} | {100 * top1:.1f} | {100 * pair:.1f} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(f"\n{table}")
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
