"""Where one training step spends its time and its memory: TensorFlow's profiler on the step of
``bench/train_step.py``.

Builds the model as ``bench/train_step.py`` does (same flags), runs ``--warmup`` steps, then one
step under ``tf.profiler`` and prints

- the self time of each kind of op (oneDNN's ``_MklNative*`` kernels, TensorFlow's own), summed
  over the step: what to make faster;
- the peak of live tensors in TensorFlow's CPU allocator, and the largest tensors live at that
  moment with the op that made each: what sets the peak memory.

With the default two inter-op threads ops overlap and their times include waiting for cores;
``--inter-op-threads 1`` gives each op's own time. The last line printed is one JSON object.

    python bench/step_profile.py --model vanilla [--precision mixed_bfloat16] [--keep-activations]
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.training.allocator import use_fast_allocator  # noqa: E402

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the profiler's tools log every step at INFO
    use_fast_allocator()

import tensorflow as tf  # noqa: E402
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_plugin  # noqa: E402

from bench.train_step import build_model, random_batch  # noqa: E402
from model.nets.variants import VARIANTS  # noqa: E402
from model.training.config import PRECISIONS, TrainConfig  # noqa: E402
from pipeline.params import FeatureParams  # noqa: E402


def tool_data(xspace: str, tool: str) -> object:
    """One of the profiler's tools (as TensorBoard's profile plugin shows them) as JSON."""
    data, ok = profiler_plugin.xspace_to_tools_data([xspace], tool, {})
    if not ok:
        raise RuntimeError(f"the profiler's {tool} tool failed: {data[:200]!r}")
    return json.loads(data)


def op_times(xspace: str) -> dict[str, float]:
    """Milliseconds of self time per op type over the profiled step, largest first."""
    table = tool_data(xspace, "framework_op_stats")[0]
    columns = [column["id"] for column in table["cols"]]
    totals: collections.Counter[str] = collections.Counter()
    for row in table["rows"]:
        cells = dict(zip(columns, [cell.get("v") if cell else None for cell in row["c"]]))
        totals[cells["type"]] += cells["total_self_time"] / 1000
    return {name: round(ms, 1) for name, ms in totals.most_common()}


def live_at_peak(xspace: str, largest: int) -> dict[str, object]:
    """The allocator's peak of live bytes and the ``largest`` tensors live at the sampled moment
    nearest to it (the profiler keeps a sample of allocations around the peak)."""
    profiles = tool_data(xspace, "memory_profile")["memoryProfilePerAllocator"]
    name, profile = max(profiles.items(), key=lambda item: len(item[1]["memoryProfileSnapshots"]))
    live: dict[str, tuple[int, str, str]] = {}
    best: tuple[int, dict[str, tuple[int, str, str]]] = (0, {})
    for snapshot in sorted(profile["memoryProfileSnapshots"], key=lambda s: int(s["timeOffsetPs"])):
        activity = snapshot["activityMetadata"]
        if activity["memoryActivity"] == "ALLOCATION":
            live[activity["address"]] = (int(activity["allocationBytes"]), activity["tfOpName"],
                                         activity.get("tensorShape", ""))
        else:
            live.pop(activity["address"], None)
        total = sum(size for size, _, _ in live.values())
        if total > best[0]:
            best = (total, dict(live))
    tensors = sorted(best[1].values(), reverse=True)[:largest]
    return {"allocator": name,
            "peak_mb": round(int(profile["profileSummary"]["peakBytesUsageLifetime"]) / 2**20, 1),
            "largest_live_at_peak": [{"mb": round(size / 2**20, 1), "op": op.split("/")[-1], "shape": shape}
                                     for size, op, shape in tensors]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(VARIANTS), default="vanilla")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--keep-activations", action="store_true", help="trainer.py's --keep-activations")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per step")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the profiled one")
    parser.add_argument("--inter-op-threads", type=int, help="TensorFlow's inter-op pool (1: each op's own time)")
    parser.add_argument("--largest", type=int, default=8, help="tensors listed at the memory peak")
    args = parser.parse_args()
    if args.inter_op_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    params = FeatureParams()
    config = TrainConfig(model=args.model, batch_size=args.batch_size, precision=args.precision,
                         keep_activations=args.keep_activations)
    model = build_model(config, params)
    iterator = iter(tf.data.Dataset.from_tensors(random_batch(config, params, seed=0)).repeat())
    model.make_train_function()
    for _ in range(1 + args.warmup):
        float(model.train_function(iterator)["loss"])
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        float(model.train_function(iterator)["loss"])
        seconds = time.perf_counter() - start
        tf.profiler.experimental.stop()
        xspace = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
        times, memory = op_times(xspace), live_at_peak(xspace, args.largest)
    print(f"profiled step: {seconds:.2f} s; op self time {sum(times.values()) / 1000:.2f} s", file=sys.stderr)
    for name, ms in list(times.items())[:20]:
        print(f"{ms:9.1f} ms  {name}", file=sys.stderr)
    print(f"{memory['allocator']} allocator peak: {memory['peak_mb']:,} MB of live tensors; largest then:",
          file=sys.stderr)
    for tensor in memory["largest_live_at_peak"]:
        print(f"{tensor['mb']:9.1f} MB  {tensor['op']} {tensor['shape']}", file=sys.stderr)
    print(json.dumps({"benchmark": "step_profile", "model": args.model, "precision": args.precision,
                      "keep_activations": args.keep_activations, "batch_size": args.batch_size,
                      "inter_op_threads": args.inter_op_threads, "profiled_step_s": round(seconds, 2),
                      "op_self_ms": times, "memory": memory}))


if __name__ == "__main__":
    main()
