"""The reference's vanilla DeepEmoCluster training step in PyTorch, and a side-by-side driver.

A re-statement, written here from the facts in ``../shared/REFERENCE.md`` (none of the
authors' code), of what one iteration of their labelled stage costs: the VGG-style encoder
(7 conv 3x3 + BatchNorm + ReLU, channels 32,32,64,64,128,128,128, strides 1,1,2,2,2,2,2,
padding 1; flatten 2 x 4 x 128 = 1024 -> Dense 256 + ReLU + Dropout 0.5), the cluster head
(Dense 256 + ReLU -> Dense Q) and the emotion head (Dense 256 + ReLU -> Dense 1), on 64
sentences x 11 chunks of 62 x 128 taken as 704 independent chunks (vanilla's chunk sampler);
loss cross-entropy + (1 - CCC); ``SGD(lr=1e-3)`` and ``Adam(lr=5e-4)`` both over every
parameter but the top cluster layer, stepped every iteration with the same gradients, and
``SGD(lr=0.05)`` on the top cluster layer. Timed like ``bench/train_step.py``: median wall
seconds per step, CPU seconds, minor page faults per step and peak RSS; the last line
printed is one JSON object with the same keys.

PyTorch is not a dependency of this project: run it from a scratch environment,

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchenv/bin/python bench/reference_step.py --steps 5

It runs with 2 threads and the glibc malloc tuning that makes PyTorch's CPU step fast
(``GLIBC_TUNABLES``, see ``REFERENCE_GLIBC_TUNABLES``; it re-executes itself with it unless
``--untuned-malloc``). ``--compare`` needs no PyTorch in the calling interpreter: it alternates
fresh processes of this step (``--torch-python``) and of ``bench/train_step.py --model vanilla``
(float32 and ``mixed_bfloat16``, ``--tf-python``; ``--with-kept-activations`` adds both with
``--keep-activations``) for ``--rounds`` rounds and prints a table and the ratios
(docs/performance.md):

    .venv/bin/python bench/reference_step.py --compare --torch-python /tmp/torchenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
"""glibc malloc never returns memory to the OS: without it PyTorch's step is 2.5-4x slower (issue 20)."""
CHANNELS = (32, 32, 64, 64, 128, 128, 128)
STRIDES = (1, 1, 2, 2, 2, 2, 2)
CHUNKS, FRAMES, MELS = 11, 62, 128


def build_reference(clusters: int):
    """The reference's vanilla network, initialised as REFERENCE.md says (conv N(0, sqrt(2/(9 out))),
    dense N(0, 0.01), zero biases); returns (network, top cluster layer)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, previous = [], 1
            for channels, stride in zip(CHANNELS, STRIDES):
                layers += [nn.Conv2d(previous, channels, 3, stride=stride, padding=1),
                           nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
                previous = channels
            self.features = nn.Sequential(*layers)
            self.embedding = nn.Sequential(nn.Linear(2 * 4 * 128, 256), nn.ReLU(inplace=True), nn.Dropout(0.5))
            self.cluster_hidden = nn.Sequential(nn.Linear(256, 256), nn.ReLU(inplace=True))
            self.top_layer = nn.Linear(256, clusters)
            self.emotion = nn.Sequential(nn.Linear(256, 256), nn.ReLU(inplace=True), nn.Linear(256, 1))
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.normal_(module.weight, 0.0, (2.0 / (9 * module.out_channels)) ** 0.5)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, 0.01)
                    nn.init.zeros_(module.bias)

        def forward(self, x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
            embedded = self.embedding(torch.flatten(self.features(x), 1))
            return self.top_layer(self.cluster_hidden(embedded)), self.emotion(embedded)[:, 0]

    net = Net()
    return net, net.top_layer


def ccc_loss(prediction, target):
    """1 - CCC, biased (ddof 0) moments throughout."""
    mean_p, mean_t = prediction.mean(), target.mean()
    var_p, var_t = prediction.var(unbiased=False), target.var(unbiased=False)
    cov = ((prediction - mean_p) * (target - mean_t)).mean()
    return 1 - 2 * cov / (var_p + var_t + (mean_p - mean_t) ** 2)


def reference_benchmark(args: argparse.Namespace) -> dict[str, object]:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net, top = build_reference(args.clusters)
    net.train()
    top_ids = {id(p) for p in top.parameters()}
    body = [p for p in net.parameters() if id(p) not in top_ids]
    optimizers = [torch.optim.SGD(body, lr=1e-3), torch.optim.Adam(body, lr=5e-4),
                  torch.optim.SGD(top.parameters(), lr=0.05)]
    rng = np.random.default_rng(args.seed)
    chunks = args.batch_size * CHUNKS
    features = torch.from_numpy(np.clip(rng.standard_normal((chunks, 1, FRAMES, MELS)), -3, 3).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, args.clusters, chunks))
    targets = torch.from_numpy(rng.standard_normal(chunks).astype(np.float32))
    cross_entropy = torch.nn.CrossEntropyLoss()

    def step() -> float:
        for optimizer in optimizers:
            optimizer.zero_grad()
        logits, prediction = net(features)
        loss = cross_entropy(logits, labels) + ccc_loss(prediction, targets)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        return float(loss.detach())

    first_start = time.perf_counter()
    step()
    first_seconds = time.perf_counter() - first_start
    for _ in range(args.warmup):
        step()
    seconds = []
    cpu_start, usage_start = os.times(), resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    cpu_end, usage_end = os.times(), resource.getrusage(resource.RUSAGE_SELF)
    median = statistics.median(seconds)
    return {
        "benchmark": "reference_step",
        "model": "vanilla (PyTorch re-statement of the reference)",
        "precision": "float32",
        "batch_size": args.batch_size,
        "input_shape": list(features.shape),
        "steps": args.steps,
        "ms_per_step": round(median * 1000, 1),
        "ms_per_step_min_max": [round(min(seconds) * 1000, 1), round(max(seconds) * 1000, 1)],
        "cpu_s_per_step": round((cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / args.steps, 2),
        "page_faults_per_step": round((usage_end.ru_minflt - usage_start.ru_minflt) / args.steps),
        "sentences_per_s": round(args.batch_size / median, 2),
        "first_step_s": round(first_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def last_json(command: list[str], env: dict[str, str]) -> dict[str, object]:
    """Runs one benchmark process and returns the JSON object it prints last."""
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout
    return json.loads(output.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict[str, object]:
    """Alternates fresh processes of the reference step and of ours, ``--rounds`` times, so
    that all three see the same machine load, and reports medians and ratios to the reference."""
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    ours = [args.tf_python, os.path.join(ROOT, "bench", "train_step.py"), "--model", "vanilla",
            "--inference-steps", "1", "--embed-sentences", "0", *common]
    precisions = ("float32",) if args.skip_bfloat16 else ("float32", "mixed_bfloat16")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    system = dict(env, DEC_SYSTEM_ALLOCATOR="1")
    runs = {"reference": ([args.torch_python, os.path.abspath(__file__), "--threads", str(args.threads), *common],
                          env)}
    for precision in precisions:
        runs[f"ours {precision}"] = ([*ours, "--precision", precision], env)
        if args.with_kept_activations:
            runs[f"ours {precision}, kept activations"] = ([*ours, "--precision", precision, "--keep-activations"], env)
        if args.with_system_allocator:
            runs[f"ours {precision}, system allocator"] = ([*ours, "--precision", precision], system)
    results: dict[str, list[dict[str, object]]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            result = last_json(*runs[name])
            results[name].append(result)
            print(f"round {round_index + 1} {name:<20} {result['ms_per_step'] / 1000:7.2f} s/step "
                  f"{result['page_faults_per_step']:>9} faults/step {result['cpu_s_per_step']:6.2f} CPU-s/step "
                  f"{result['peak_rss_mb']:>8.0f} MB  load {result['load_average'][0]}", file=sys.stderr, flush=True)

    def summary(name: str) -> dict[str, object]:
        rows = results[name]
        step = statistics.median(r["ms_per_step"] for r in rows) / 1000
        return {"s_per_step": round(step, 2), "per_round_s": [r["ms_per_step"] / 1000 for r in rows],
                "sentences_per_s": round(args.batch_size / step, 2),
                "faults_per_step": round(statistics.median(r["page_faults_per_step"] for r in rows)),
                "cpu_s_per_step": round(statistics.median(r["cpu_s_per_step"] for r in rows), 2),
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows))}

    table = {name: summary(name) for name in runs}
    reference = table["reference"]
    for name, row in table.items():
        row["speed_vs_reference"] = round(reference["s_per_step"] / row["s_per_step"], 2)
        row["faults_vs_reference"] = round(row["faults_per_step"] / max(reference["faults_per_step"], 1), 3)
        row["peak_rss_vs_reference"] = round(row["peak_rss_mb"] / reference["peak_rss_mb"], 2)
    print("| run | s/step | sentences/s | faults/step | CPU-s/step | peak RSS MB | speed vs reference "
          "| memory vs reference |")
    print("|---|---|---|---|---|---|---|---|")
    emulated = "" if results["ours float32"][-1].get("bf16_native") else " (emulated: no AVX-512 BF16)"
    for name, row in table.items():
        label = name + (emulated if "bfloat16" in name else "")
        print(f"| {label} | {row['s_per_step']:.2f} | {row['sentences_per_s']:.2f} | {row['faults_per_step']:,} | "
              f"{row['cpu_s_per_step']:.2f} | {row['peak_rss_mb']:,} | {row['speed_vs_reference']:.2f}x | "
              f"{row['peak_rss_vs_reference']:.2f}x |")
    ours_info = results["ours float32"][-1]
    return {"benchmark": "reference_side_by_side", "rounds": args.rounds, "table": table,
            "machine": {key: ours_info.get(key) for key in ("cpu", "cpu_count", "bf16_native", "allocator",
                                                             "tensorflow", "python")},
            "torch": results["reference"][-1]["torch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="store_true",
                        help="alternate this step with bench/train_step.py --model vanilla and print ratios")
    parser.add_argument("--torch-python", default="/tmp/torchenv/bin/python",
                        help="--compare: an interpreter with PyTorch")
    parser.add_argument("--tf-python", default=sys.executable, help="--compare: the project's interpreter")
    parser.add_argument("--rounds", type=int, default=2, help="--compare: rounds of the alternation")
    parser.add_argument("--skip-bfloat16", action="store_true", help="--compare: float32 runs only")
    parser.add_argument("--with-kept-activations", action="store_true",
                        help="--compare: also run ours with --keep-activations (autodiff's backward pass, the "
                             "default before the recomputed blocks)")
    parser.add_argument("--with-system-allocator", action="store_true",
                        help="--compare: also run ours on glibc malloc (DEC_SYSTEM_ALLOCATOR=1), the before figures")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first one")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences (of 11 chunks) per step")
    parser.add_argument("--clusters", type=int, default=10, help="Q")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--untuned-malloc", action="store_true", help=f"do not set GLIBC_TUNABLES={REFERENCE_GLIBC_TUNABLES}")
    args = parser.parse_args()
    if args.compare:
        print(json.dumps(compare(args)))
        return
    if not args.untuned_malloc and os.environ.get("GLIBC_TUNABLES") != REFERENCE_GLIBC_TUNABLES:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                  dict(os.environ, GLIBC_TUNABLES=REFERENCE_GLIBC_TUNABLES))
    print(json.dumps(reference_benchmark(args)))


if __name__ == "__main__":
    main()
