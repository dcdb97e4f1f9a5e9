"""Throughput of lr_jax.local_bounds against the NumPy reference and a plain matmul.

Prints one table row per net:

* pairs/s of ``local_bounds`` (warm, median of repeats) and of the vectorised
  NumPy reference (``tests/reference_algorithm1.py``) on the same inputs;
* achieved GFLOP/s, counting only the work Algorithm 1 needs: the products
  ``W_k^T L`` of hidden layers 2..H (2 * m_k * m_{k-1} * d flops per pair; the
  first layer's map is the identity, so it has no product) and the ``|W|^T U``
  products, plus one forward pass per point;
* GFLOP/s of one plain ``jnp.matmul`` doing the same total work at the same
  precision (HIGHEST), as the machine's attainable rate.

Usage:
  python scripts/bench_bound.py                       # (a) paper scale, (b) 784-1024x3 net
  python scripts/bench_bound.py --large-points 1024   # more points for (b) (GPU)
  python scripts/bench_bound.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lr_jax import local_bounds  # noqa: E402
from tests.reference_algorithm1 import algorithm1_vectorised  # noqa: E402

RADII = np.array([0.1, 0.2, 0.4, 0.8], dtype=np.float32)


def _net(d, widths, out, seed=0):
    rng = np.random.default_rng(seed)
    dims = [d, *widths, out]
    return [
        (rng.normal(size=(a, b)).astype(np.float32) / np.sqrt(a), (0.1 * rng.normal(size=b)).astype(np.float32))
        for a, b in zip(dims[:-1], dims[1:])
    ]


def _time(fn, repeats):
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _useful_flops(d, widths, n_points, n_radii):
    pairs = n_points * n_radii
    per_pair = sum(2 * m_in * m_out * d + 2 * m_in * m_out for m_in, m_out in zip(widths[:-1], widths[1:]))
    forward = 2 * d * widths[0] + sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))
    return pairs * per_pair + n_points * forward


def _matmul_gflops(m, d, pairs, repeats):
    """GFLOP/s of one [m, m] @ [m, pairs * d] product at HIGHEST precision."""
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (m, m), jnp.float32)
    b = jax.random.normal(key, (m, pairs * d), jnp.float32)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    t = _time(lambda: f(a, b).block_until_ready(), repeats)
    return 2 * m * m * pairs * d / t / 1e9


def bench(name, d, widths, n_points, ref_points, repeats):
    layers = _net(d, widths, 2)
    xs = np.random.default_rng(1).uniform(0, 1, size=(n_points, d)).astype(np.float32)
    pairs = n_points * len(RADII)
    t_jax = _time(lambda: local_bounds(layers, xs, RADII).num_unstable.block_until_ready(), repeats)
    ref_pairs = ref_points * len(RADII)

    def run_ref():
        for x in xs[:ref_points]:
            for r in RADII:
                algorithm1_vectorised(layers, x, float(r), dtype=np.float32)

    t_ref = _time(run_ref, 1)
    gflops = _useful_flops(d, widths, n_points, len(RADII)) / t_jax / 1e9
    mm = _matmul_gflops(max(widths), d, pairs, repeats)
    return {
        "net": name,
        "pairs": pairs,
        "jax_pairs_per_s": pairs / t_jax,
        "numpy_pairs_per_s": ref_pairs / t_ref,
        "speedup": (pairs / t_jax) / (ref_pairs / t_ref),
        "gflops": gflops,
        "matmul_gflops": mm,
        "fraction_of_matmul": gflops / mm,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper-points", type=int, default=2048)
    p.add_argument("--large-points", type=int, default=32)
    p.add_argument("--ref-points", type=int, default=64, help="points for the NumPy reference (paper net)")
    p.add_argument("--large-ref-points", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    rows = [bench("(a) 36-64-64-64-2", 36, [64, 64, 64], args.paper_points, args.ref_points, args.repeats)]
    if not args.skip_large:
        rows.append(
            bench("(b) 784-1024-1024-1024-10", 784, [1024, 1024, 1024], args.large_points, args.large_ref_points, args.repeats)
        )
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, {platform.processor() or platform.machine()}")
    head = f"{'net':28s} {'pairs':>7s} {'jax pairs/s':>12s} {'numpy pairs/s':>14s} {'speedup':>8s} {'GFLOP/s':>9s} {'matmul GFLOP/s':>15s} {'frac':>6s}"
    print(head)
    for r in rows:
        print(
            f"{r['net']:28s} {r['pairs']:7d} {r['jax_pairs_per_s']:12.0f} {r['numpy_pairs_per_s']:14.1f} "
            f"{r['speedup']:8.1f} {r['gflops']:9.1f} {r['matmul_gflops']:15.1f} {r['fraction_of_matmul']:6.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": str(device.device_kind), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
