"""CPU training steps with glibc's defaults vs plateau's kept freed memory (issue 15).

Each arm is a fresh process (the setting lasts for a process): the default backbone
(EfficientNet-Lite0, random weights: the compute is the same) in the channels-last layout a
CPU trial trains it in (``--nchw`` for the plain layout), batch ``--batch`` at ``--size`` px,
SGD, one warm-up step, then ``--steps`` timed training steps. The arms run
alternately, ``--repeats`` times each. Prints seconds per step and the process's user and
system CPU seconds per step for each arm, and the ratio of the median steps.

    python benchmarks/allocator.py                  # about 5 minutes on 2 CPU cores
    python benchmarks/allocator.py --size 64        # where it makes no difference
    python benchmarks/allocator.py --nchw           # the layout before channels-last
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: One arm, run in its own process: prints a JSON line of its timings.
ARM = """
import json, resource, sys, time
import timm, torch
from sweeps.job.allocator import keep_freed_memory
kept = keep_freed_memory()
size, batch, steps, channels_last = map(int, sys.argv[1:5])
fmt = torch.channels_last if channels_last else torch.contiguous_format
model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
model = model.to(memory_format=fmt)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
images = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
labels = torch.randint(0, 10, (batch,))

def step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()

step()  # warm-up
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
print(json.dumps({"kept": kept, "step": wall / steps,
                  "user": (after.ru_utime - before.ru_utime) / steps,
                  "sys": (after.ru_stime - before.ru_stime) / steps}))
"""


def run_arm(keep: bool, args: argparse.Namespace) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env |= {"PLATEAU_KEEP_FREED_MEMORY": "1" if keep else "0", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": str(args.threads)}
    argv = [str(args.size), str(args.batch), str(args.steps), str(int(args.channels_last))]
    result = subprocess.run([sys.executable, "-c", ARM, *argv], env=env, capture_output=True,
                            text=True, check=True)
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    assert timings["kept"] == keep, "the arm did not get the allocator it asked for"
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--nchw", dest="channels_last", action="store_false",
                        help="NCHW tensors instead of the channels-last layout a CPU trial "
                             "of this backbone trains in")
    args = parser.parse_args()
    arms: dict[str, list[dict[str, float]]] = {"glibc defaults": [], "kept freed memory": []}
    for _ in range(args.repeats):
        for name, keep in (("glibc defaults", False), ("kept freed memory", True)):
            arms[name].append(run_arm(keep, args))
    layout = "channels-last" if args.channels_last else "NCHW"
    print(f"EfficientNet-Lite0 training step ({layout}), {args.size} px, batch {args.batch}, "
          f"{args.threads} threads, {args.steps} steps x {args.repeats} runs per arm")
    medians = {}
    for name, runs in arms.items():
        medians[name] = statistics.median(r["step"] for r in runs)
        each = ", ".join(f"{r['step']:.2f}" for r in runs)
        print(f"  {name:18} {medians[name]:6.2f} s/step (runs: {each}); per step user "
              f"{statistics.median(r['user'] for r in runs):.2f} s, sys "
              f"{statistics.median(r['sys'] for r in runs):.2f} s")
    print(f"kept freed memory is {medians['glibc defaults'] / medians['kept freed memory']:.2f}x "
          "faster per step")


if __name__ == "__main__":
    main()
