"""Seconds of our TensorFlow K-means against scikit-learn's on one epoch's worth of points.

165,000 x 256 points is 15K sentences x 11 chunks of 256-d cluster features. Both run
k-means++ and 20 Lloyd iterations (scikit-learn: lloyd, n_init=1, tol=0), timed from the
numpy array to the result. Both stop early at a fixed point, so the points are
overlapping clusters that neither converges on in 20 iterations (the table checks it).
Runs alternate ours and theirs so machine load hits both alike, and the best of
``--repeats`` counts. Our graphs are traced by a warm-up run first (once per process; a
trainer pays it once). Prints a table and a final JSON line.

    python bench/kmeans.py [--points 165000] [--dims 256] [--clusters 10 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

from model.training.kmeans import kmeans, kmeans_plusplus, lloyd  # noqa: E402


def make_points(num_points: int, dims: int, seed: int = 0) -> np.ndarray:
    """Overlapping Gaussian clusters, so neither implementation converges early."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, dims), dtype=np.float32)
    labels = rng.integers(0, len(centers), num_points)
    return centers[labels] + 4.0 * rng.standard_normal((num_points, dims), dtype=np.float32)


def time_ours(points: np.ndarray, k: int, iterations: int) -> tuple[float, float]:
    start = time.perf_counter()
    _, _, inertia = kmeans(points, k, iterations=iterations, seed=0)
    return time.perf_counter() - start, inertia


def runs_all_iterations(points: np.ndarray, k: int, iterations: int) -> bool:
    """Whether our Lloyd loop is still moving at its last iteration (so it did not stop early)."""
    start = kmeans_plusplus(points, k, seed=0)
    return lloyd(points, start, iterations - 1)[2] != lloyd(points, start, iterations)[2]


def time_sklearn(points: np.ndarray, k: int, iterations: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    fitted = KMeans(k, init="k-means++", n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd",
                    random_state=0).fit(points)
    return time.perf_counter() - start, float(fitted.inertia_), int(fitted.n_iter_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=165_000)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--clusters", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    points = make_points(args.points, args.dims)
    kmeans(points[:1000], 2, iterations=1)
    rows = []
    for k in args.clusters:
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(time_ours(points, k, args.iterations))
            theirs.append(time_sklearn(points, k, args.iterations))
        ours_s, ours_inertia = min(ours)
        sk_s, sk_inertia, sk_iterations = min(theirs)
        rows.append({
            "k": k, "ours_s": round(ours_s, 3), "sklearn_s": round(sk_s, 3),
            "ratio_ours_over_sklearn": round(ours_s / sk_s, 3), "sklearn_iterations": sk_iterations,
            "inertia_ours_over_sklearn": round(ours_inertia / sk_inertia, 5),
            "ours_ran_all_iterations": runs_all_iterations(points, k, args.iterations),
        })

    print(f"K-means, {args.points} x {args.dims} float32, {args.iterations} Lloyd iterations, "
          f"best of {args.repeats}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"{'k':>4} {'ours s':>8} {'sklearn s':>10} {'ratio':>7} {'sk iters':>9} {'ours all iters':>15} "
          f"{'inertia ratio':>14}")
    for row in rows:
        print(f"{row['k']:>4} {row['ours_s']:>8.3f} {row['sklearn_s']:>10.3f} {row['ratio_ours_over_sklearn']:>7.3f} "
              f"{row['sklearn_iterations']:>9} {str(row['ours_ran_all_iterations']):>15} "
              f"{row['inertia_ours_over_sklearn']:>14.5f}")
    print(json.dumps({"bench": "kmeans", "points": args.points, "dims": args.dims, "iterations": args.iterations,
                      "repeats": args.repeats, "cpus": os.cpu_count(), "results": rows}))


if __name__ == "__main__":
    main()
