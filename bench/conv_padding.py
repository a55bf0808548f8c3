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

``--gradient-kernels`` times the gradient kernels alone instead, as ``SymmetricConv2D.backprop``
and TensorFlow's own gradient run them: the input gradient and the kernel gradient with explicit
paddings (TensorFlow's kernels) or on a padded copy ("VALID", oneDNN's), and the kernel gradient
with the bias gradient of the 4-D maps (which TensorFlow fuses into one oneDNN kernel) or of the
flattened ones (two kernels).

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


def gradient_kernels(x: tf.Tensor, k: tf.Tensor, stride: int) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
    """The gradient kernels of one conv, by form; each takes the output gradient and returns a scalar
    (a sum, so that no large output is copied out of the function)."""
    used = [[0, 0], [1, 0], [1, 0], [0, 0]] if stride == 2 else [[0, 0], [1, 1], [1, 1], [0, 0]]
    padding: Any = "SAME" if stride == 1 else used
    strides, shape, kernel_shape = [1, stride, stride, 1], tf.shape(x), tf.shape(k)
    padded = x if stride == 1 else tf.pad(x, used)
    valid = "SAME" if stride == 1 else "VALID"

    def total(*tensors: tf.Tensor) -> tf.Tensor:
        return tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32)) for t in tensors])

    def bias(dy: tf.Tensor, flat: bool) -> tf.Tensor:
        return tf.raw_ops.BiasAddGrad(out_backprop=tf.reshape(dy, [-1, dy.shape[-1]]) if flat else dy)

    forms = {
        "input, explicit": lambda dy: total(tf.compat.v1.nn.conv2d_backprop_input(shape, k, dy, strides, padding)),
        "input, padded copy": lambda dy: total(tf.compat.v1.nn.conv2d_backprop_input(
            tf.shape(padded), k, dy, strides, valid)[:, 1:, 1:] if stride == 2 else
            tf.compat.v1.nn.conv2d_backprop_input(shape, k, dy, strides, valid)),
        "kernel, explicit": lambda dy: total(tf.compat.v1.nn.conv2d_backprop_filter(x, kernel_shape, dy, strides, padding)),
        "kernel, padded copy": lambda dy: total(tf.compat.v1.nn.conv2d_backprop_filter(
            padded, kernel_shape, dy, strides, valid)),
        "kernel + 4-D bias (fused)": lambda dy: total(tf.compat.v1.nn.conv2d_backprop_filter(
            padded, kernel_shape, dy, strides, valid), bias(dy, flat=False)),
        "kernel + flat bias": lambda dy: total(tf.compat.v1.nn.conv2d_backprop_filter(
            padded, kernel_shape, dy, strides, valid), bias(dy, flat=True)),
    }
    if stride == 1:
        del forms["input, explicit"], forms["kernel, explicit"]
    return forms


def time_gradient_kernels(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for layer, (shape, filters, stride) in LAYERS.items():
        outputs = [-(-size // stride) for size in shape[:2]]
        for dtype in (tf.float32, tf.bfloat16):
            x = tf.cast(tf.random.stateless_normal([args.batch, *shape], seed=[0, 1]), dtype)
            k = tf.cast(tf.random.stateless_normal([3, 3, shape[-1], filters], seed=[2, 3]), dtype)
            dy = tf.cast(tf.random.stateless_normal([args.batch, *outputs, filters], seed=[4, 5]), dtype)
            for name, kernel in gradient_kernels(x, k, stride).items():
                if dtype == tf.bfloat16 and "explicit" in name:
                    continue  # TensorFlow's own bfloat16 kernels: 30x slower, measured above
                run = tf.function(kernel)
                run(dy).numpy()
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.repeats):
                    run(dy).numpy()
                wall, cpu = (time.perf_counter() - wall) / args.repeats, (time.process_time() - cpu) / args.repeats
                results[f"{layer} {dtype.name} {name}"] = {"s": round(wall, 3), "cpu_s": round(cpu, 3)}
                print(f"{layer:36s} {dtype.name:9s} {name:26s} {wall:7.3f} s  {cpu:7.3f} CPU-s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=704, help="chunks (64 sentences x 11 by default)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gradient-kernels", action="store_true",
                        help="time the gradient kernels alone, by padding form and bias gradient")
    args = parser.parse_args()
    if args.gradient_kernels:
        print(json.dumps({"bench": "conv_gradient_kernels", "batch": args.batch,
                          "results": time_gradient_kernels(args)}))
        return
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
