"""CPU training steps with the default (NCHW) tensor layout vs channels-last (NHWC).

plateau trains in channels-last on a GPU, and on the CPU only for backbones with depthwise
convolutions (``ImageClassifier.on_fit_start``): this benchmark is what decided it. For each
backbone and size: one process, random weights (the compute is the same), batch ``--batch``,
AdamW, one warm-up step per layout, then ``--steps`` timed training steps, the two layouts
alternating ``--repeats`` times. Prints the median seconds per step of each and their ratio.

    python benchmarks/memory_format.py          # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sweeps.job.allocator import keep_freed_memory  # noqa: E402

LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}


def seconds_per_step(backbone: str, size: int, batch: int, steps: int,
                     repeats: int) -> dict[str, float]:
    model = timm.create_model(backbone, pretrained=False, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for repeat in range(repeats):
        for name, layout in LAYOUTS.items():
            model = model.to(memory_format=layout)
            batch_in = images.contiguous(memory_format=layout)
            for step in range(steps + (repeat == 0)):
                started = time.perf_counter()
                optimizer.zero_grad()
                F.cross_entropy(model(batch_in), labels).backward()
                optimizer.step()
                if repeat or step:  # the first step of each layout warms up
                    times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="*", default=["tf_efficientnet_lite0", "resnet18"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[64, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()  # as in a trial process
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for backbone in args.backbones:
        for size in args.sizes:
            t = seconds_per_step(backbone, size, args.batch, args.steps, args.repeats)
            print(f"{backbone:>24} {size:>4} px: NCHW {t['NCHW']:.3f} s, channels-last "
                  f"{t['channels-last']:.3f} s per step: {t['NCHW'] / t['channels-last']:.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
