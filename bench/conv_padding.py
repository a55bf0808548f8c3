"""Forward + backward time of one encoder convolution under each way of writing the reference's ``padding=1``.

``SymmetricConv2D`` (model/nets/encoder.py) must pad as PyTorch's ``padding=k // 2``; TensorFlow
can be told that in several forms that give the same numbers at very different speeds, because
oneDNN has kernels for some and TensorFlow falls back to its own for others:

- ``explicit 1,1``: ``tf.nn.conv2d(..., padding=[[0, 0], [1, 1], [1, 1], [0, 0]])``;
- ``explicit used``: only the zeros a window reads (a stride-2 conv over an even size never
  reads the trailing one);
- ``SAME``: TensorFlow's "SAME", equal to the reference's for stride 1 only;
- ``pad + VALID``: a padded copy of the map, then "VALID".

    python bench/conv_padding.py [--batch 704] [--repeats 2]

Prints one line per (layer, dtype, form) and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.training.allocator import use_fast_allocator  # noqa: E402

if __name__ == "__main__":
    use_fast_allocator()

import tensorflow as tf  # noqa: E402

LAYERS = {"conv2 (stride 1, 62x128x32 -> 32)": ((62, 128, 32), 32, 1),
          "conv3 (stride 2, 62x128x32 -> 64)": ((62, 128, 32), 64, 2)}
"""The encoder's two most expensive convolutions (paper Table 1 geometry)."""


def forms(stride: int) -> dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]]:
    used = [[0, 0], [1, 0], [1, 0], [0, 0]] if stride == 2 else [[0, 0], [1, 1], [1, 1], [0, 0]]
    candidates = {
        "explicit 1,1": lambda x, k: tf.nn.conv2d(x, k, stride, padding=[[0, 0], [1, 1], [1, 1], [0, 0]]),
        "explicit used": lambda x, k: tf.nn.conv2d(x, k, stride, padding=used),
        "pad + VALID": lambda x, k: tf.nn.conv2d(tf.pad(x, used), k, stride, padding="VALID"),
    }
    if stride == 1:
        candidates["SAME"] = lambda x, k: tf.nn.conv2d(x, k, 1, padding="SAME")
    return candidates


def time_step(conv: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], x: tf.Tensor, k: tf.Tensor,
              repeats: int) -> tuple[float, float, tf.Tensor]:
    """Mean wall and CPU seconds of forward + backward over ``repeats`` calls after a tracing one."""
    @tf.function
    def step(x: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = conv(x, k)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        return (y, *tape.gradient(loss, [x, k]))

    outputs = step(x, k)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        outputs = step(x, k)
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats, outputs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=704, help="chunks (64 sentences x 11 by default)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for layer, (shape, filters, stride) in LAYERS.items():
        x32 = tf.random.stateless_normal([args.batch, *shape], seed=[0, 1])
        k32 = tf.random.stateless_normal([3, 3, shape[-1], filters], seed=[2, 3])
        for dtype in (tf.float32, tf.bfloat16):
            reference = None
            for name, conv in forms(stride).items():
                wall, cpu, y = time_step(conv, tf.cast(x32, dtype), tf.cast(k32, dtype), args.repeats)
                reference = y if reference is None else reference
                error = float(tf.reduce_max(tf.abs(tf.cast(y, tf.float32) - tf.cast(reference, tf.float32))))
                results[f"{layer} {dtype.name} {name}"] = {"s": round(wall, 3), "cpu_s": round(cpu, 3),
                                                            "max_abs_diff_vs_first": error}
                print(f"{layer:36s} {dtype.name:9s} {name:14s} {wall:7.3f} s  {cpu:7.3f} CPU-s  "
                      f"max |diff| vs first form {error:.2g}", flush=True)
    print(json.dumps({"bench": "conv_padding", "batch": args.batch, "results": results}))


if __name__ == "__main__":
    main()
