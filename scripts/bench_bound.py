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

Each of (a) and (b) is also run as a Flax module (a list of ``Dense``) through
``lr_jax.trace_network``, in the same run (column ``traced pairs/s``).

With ``--lenet``: a LeNet-5-style CNN on 28x28 inputs (conv 6@5x5, average
pool 2, conv 16@5x5, average pool 2, dense 120, dense 84, output 10) through
``trace_network`` (each map applied as it is: convs to the ``d`` directions)
against the same net written as dense matrices (each composite map between
ReLU layers materialised), run two ways: ``local_bounds(layers)`` and a plain
unpadded dense recursion written here (one full-float32 matmul per layer,
the first layer without a product). All three must give the same ``C``.
GFLOP/s count the needed work of each form: the linear maps of layers 2..H
applied to ``d`` directions (XLA's flop count of one application, times
``d``) plus one ``|M|^T U`` application, per pair.

With ``--scale``, measures instead how ``local_bounds(..., masks=False)``
scales in the number of points ``N`` on the 784-1024-1024-1024-10 net
(N(0, 1/fan_in) kernels, points uniform in ``[0, 1]^784``, radii 0.1, 0.2,
0.4, 0.8), one fresh subprocess per ``N`` so that each peak is its own:

* pairs/s and achieved TFLOP/s (useful flops as above) of one warm call, next
  to a plain HIGHEST-precision matmul of the kernel's per-chunk shape
  ``[W, W] @ [W, chunk_pairs * d]``;
* the measured peak memory of the subprocess: ``peak_bytes_in_use`` of the
  device's allocator on accelerators, the peak resident set size
  (``VmHWM``) on CPU, where ``base`` is the RSS before the net and the
  points were created (the runtime itself);
* XLA's buffer assignment for the call at the full ``N`` (compiled, not run):
  temporaries, and arguments (the points are ``N * 784 * 4`` bytes of them).

A call whose estimated time (from a warm two-chunk calibration) exceeds
``--max-seconds`` runs on a prefix of the points instead of all ``N``
(``run pairs`` < ``pairs``, marked ``prefix``): its pairs/s is then measured on
that prefix, its peak memory on the full ``N`` points held in memory while
only the prefix is evaluated, and the full-``N`` call is only compiled (its
buffer sizes reported). On a GPU every row normally runs in full.

Usage:
  python scripts/bench_bound.py                       # (a) paper scale, (b) 784-1024x3 net
  python scripts/bench_bound.py --large-points 1024   # more points for (b) (GPU)
  python scripts/bench_bound.py --json out.json
  python scripts/bench_bound.py --exact                # rate of the exact counter
  python scripts/bench_bound.py --scale               # N in 1e3, 1e4, 7e4 (GPU)
  python scripts/bench_bound.py --lenet               # LeNet-5: traced (structured) vs dense forms
  python scripts/bench_bound.py --conv --conv-step    # paper vs tight on four conv nets, memory per ball
  python scripts/bench_bound.py --scale --scale-points 1000,10000 --max-seconds 60   # CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402

import lr_jax  # noqa: E402
from lr_jax import local_bounds  # noqa: E402
from lr_jax.networks.tracing import graph_nodes  # noqa: E402
from lr_jax.bounds.core import default_chunk_size  # noqa: E402
from tests.conv_nets import CONV_NETS, FlaxMNISTCNN, LeNet5, make_network  # noqa: E402
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


class _DenseList(nn.Module):
    """The MLP as most Flax users write it: a list of Dense, relu between."""

    widths: tuple

    def setup(self):
        self.dense = [nn.Dense(w) for w in self.widths]

    def __call__(self, x):
        for layer in self.dense[:-1]:
            x = nn.relu(layer(x))
        return self.dense[-1](x)


def _traced(layers):
    module = _DenseList(tuple(W.shape[1] for W, _ in layers))
    params = {f"dense_{i}": {"kernel": W, "bias": b} for i, (W, b) in enumerate(layers)}
    return lr_jax.network_from_linen(module, {"params": params}, np.zeros(layers[0][0].shape[0], np.float32))


def bench(name, d, widths, n_points, ref_points, repeats):
    layers = _net(d, widths, 2)
    net = _traced(layers)
    xs = np.random.default_rng(1).uniform(0, 1, size=(n_points, d)).astype(np.float32)
    pairs = n_points * len(RADII)
    t_jax = _time(lambda: local_bounds(layers, xs, RADII).num_unstable.block_until_ready(), repeats)
    t_traced = _time(lambda: local_bounds(net, xs, RADII).num_unstable.block_until_ready(), repeats)
    same = bool(np.array_equal(np.asarray(local_bounds(net, xs[:8], RADII).num_unstable),
                               np.asarray(local_bounds(layers, xs[:8], RADII).num_unstable)))
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
        "traced_pairs_per_s": pairs / t_traced,
        "traced_same_c": same,
        "numpy_pairs_per_s": ref_pairs / t_ref,
        "speedup": (pairs / t_jax) / (ref_pairs / t_ref),
        "gflops": gflops,
        "matmul_gflops": mm,
        "fraction_of_matmul": gflops / mm,
    }


# ---------------------------------------------------------------------------
# --scale: pairs/s and peak memory against N, one subprocess per N

SCALE_D, SCALE_WIDTHS, SCALE_OUT = 784, [1024, 1024, 1024], 10
_MIB = 2**20


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started (``VmHWM``).

    Not ``ru_maxrss``: Linux keeps that across ``fork`` and ``exec``, so a
    child of a large parent reports at least the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_now(device) -> int:
    if device.platform == "cpu":
        return _rss_bytes()
    return (device.memory_stats() or {}).get("bytes_in_use", 0)


def _memory_peak(device) -> int:
    if device.platform == "cpu":
        return _peak_rss_bytes()
    return (device.memory_stats() or {}).get("peak_bytes_in_use", 0)


def _timed(compiled, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - t0


def scale_child(n: int, radii: np.ndarray, max_seconds: float, chunk_size: int | None) -> dict:
    """One row of the ``--scale`` table, measured in this (fresh) process.

    Returns a dict with the run's sizes, its time, the peak and baseline memory
    and XLA's buffer sizes of the full-``n`` call.
    """
    device = jax.devices()[0]
    base = _memory_now(device)
    layers = jax.device_put(_net(SCALE_D, SCALE_WIDTHS, SCALE_OUT))
    chunk = chunk_size or default_chunk_size(layers)
    points_per_chunk = max(1, chunk // len(radii))
    fn = jax.jit(lambda layers, xs: local_bounds(layers, xs, radii, chunk_size=chunk, masks=False))

    def compile_for(points):
        return fn.lower(layers, jax.ShapeDtypeStruct((points, SCALE_D), jnp.float32)).compile()

    full = compile_for(n)
    mem = full.memory_analysis()  # None where the backend does not report it
    xs = jax.device_put(np.random.default_rng(1).uniform(0, 1, size=(n, SCALE_D)).astype(np.float32))

    # Calibrate on two chunks (warm), then time all n points or the prefix that fits max_seconds.
    cal_points = min(n, 2 * points_per_chunk)
    cal = compile_for(cal_points)
    _timed(cal, layers, xs[:cal_points])
    t_cal = _timed(cal, layers, xs[:cal_points])
    chunks_in_budget = int(max_seconds / t_cal * math.ceil(cal_points / points_per_chunk))
    run_points = min(n, max(1, chunks_in_budget) * points_per_chunk)
    compiled = full if run_points == n else compile_for(run_points)
    t = _timed(compiled, layers, xs if run_points == n else xs[:run_points])
    return {
        "n": n,
        "radii": len(radii),
        "pairs": n * len(radii),
        "run_pairs": run_points * len(radii),
        "seconds": t,
        "pairs_per_s": run_points * len(radii) / t,
        "tflops": _useful_flops(SCALE_D, SCALE_WIDTHS, run_points, len(radii)) / t / 1e12,
        "chunk_pairs": points_per_chunk * len(radii),
        "peak_mib": _memory_peak(device) / _MIB,
        "base_mib": base / _MIB,
        "xla_temp_mib": mem.temp_size_in_bytes / _MIB if mem else float("nan"),
        "xla_args_mib": mem.argument_size_in_bytes / _MIB if mem else float("nan"),
        "input_mib": n * SCALE_D * 4 / _MIB,
        "device": f"{device.device_kind} ({device.platform})",
    }


def _run_child(n: int, args) -> dict:
    cmd = [
        sys.executable, __file__, "--scale-child", str(n), "--scale-radii", args.scale_radii,
        "--max-seconds", str(args.max_seconds),
    ]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"--scale child for N={n} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parse_floats(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split(",") if v], dtype=np.float32)


def scale_main(args) -> None:
    """Runs one child per N, then the matmul reference here (after the children,
    so this process holds no device memory while they measure theirs)."""
    points = [int(float(v)) for v in args.scale_points.split(",") if v]
    rows = [_run_child(n, args) for n in points]
    mm_tflops = _matmul_gflops(max(SCALE_WIDTHS), SCALE_D, rows[0]["chunk_pairs"], args.repeats) / 1e3
    for r in rows:
        r["matmul_tflops"] = mm_tflops
        r["fraction_of_matmul"] = r["tflops"] / mm_tflops
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
    )
    print(
        f"net 784-1024-1024-1024-10, radii {args.scale_radii}, masks=False, {rows[0]['chunk_pairs']} pairs per "
        f"chunk; matmul reference [1024, 1024] @ [1024, {rows[0]['chunk_pairs']} * 784] at HIGHEST"
    )
    print(
        f"{'N':>6s} {'pairs':>7s} {'run pairs':>9s} {'pairs/s':>9s} {'TFLOP/s':>8s} {'matmul TFLOP/s':>14s} "
        f"{'frac':>5s} {'peak MiB':>9s} {'base MiB':>9s} {'XLA temp MiB':>12s} {'input MiB':>9s}  {'run':6s} device"
    )
    for r in rows:
        run = "full" if r["run_pairs"] == r["pairs"] else "prefix"
        print(
            f"{r['n']:6d} {r['pairs']:7d} {r['run_pairs']:9d} {r['pairs_per_s']:9.1f} {r['tflops']:8.4f} "
            f"{r['matmul_tflops']:14.4f} {r['fraction_of_matmul']:5.2f} {r['peak_mib']:9.0f} {r['base_mib']:9.0f} "
            f"{r['xla_temp_mib']:12.1f} {r['input_mib']:9.1f}  {run:6s} {r['device']}"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": str(device.device_kind), "scale_rows": rows}, indent=2))


def exact_main(radii: np.ndarray) -> None:
    """Regions/s of the exact counter on the paper's setting (36-32-32-32-2)."""
    from lr_jax.bounds.exact_count import count_regions_with_stats

    layers = _net(36, [32, 32, 32], 2)
    x = np.random.default_rng(1).uniform(0, 1, size=36)
    print(f"net 36-32-32-32-2 (N(0, 1/fan_in) kernels, N(0, 0.1^2) biases), one centre uniform in [0, 1]^36; {platform.machine()}")
    print(f"{'radius':>7s} {'C':>4s} {'regions':>8s} {'complete':>9s} {'programs':>9s} {'seconds':>8s} {'regions/s':>10s} {'programs/s':>11s}")
    for r in radii:
        c = int(local_bounds(layers, x[None], [r]).num_unstable[0, 0])
        t0 = time.perf_counter()
        rc, programs = count_regions_with_stats(layers, x, float(r))
        t = time.perf_counter() - t0
        print(f"{r:7.3g} {c:4d} {rc.count:8d} {str(rc.complete):>9s} {programs:9d} {t:8.2f} {rc.count / t:10.1f} {programs / t:11.1f}")


# ---------------------------------------------------------------------------
# --lenet: structured maps against dense matrices


_HI = jax.lax.Precision.HIGHEST


def _dense_pair(layers, x, r):
    """Algorithm 1 on dense matrices, unpadded: one matmul per layer, none for the first."""
    pre, h = [], x
    for W, b in layers[:-1]:
        z = jnp.matmul(h, W, precision=_HI) + b
        pre.append(z)
        h = jax.nn.relu(z)
    c, lin, moving = 0, None, None
    for k, (W, _) in enumerate(layers[:-1]):
        if k == 0:
            new_lin, usum = W, jnp.zeros(W.shape[1])  # L = I: the kernel itself, [d, n]
        else:
            new_lin = jnp.matmul(lin, W, precision=_HI)
            usum = jnp.matmul(moving, jnp.abs(W), precision=_HI)
        a = pre[k]
        u = r * jnp.sqrt(jnp.sum(new_lin * new_lin, axis=0)) + usum
        dead = (a < 0) & (u + a < 0)
        pos = (a >= 0) & (u < a)
        linear = pos & (usum == 0)
        c = c + jnp.sum(~(dead | pos))
        lin = jnp.where(linear[None], new_lin, 0.0)
        moving = jnp.where(dead | linear, 0.0, jnp.where(a < 0, u + a, u))
    return c


def _map_flops(node, source) -> float:
    """XLA's flop count of one application of a layer's linear map (one direction)."""
    shape = node._g.shapes[node._vars[source]]
    compiled = jax.jit(lambda t: node.linear({source: t})).lower(jnp.zeros(shape, jnp.float32)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def lenet_main(n_points: int, repeats: int) -> None:
    module = LeNet5()
    x0 = jnp.zeros((28, 28, 1), jnp.float32)
    variables = module.init(jax.random.PRNGKey(0), x0)
    net = lr_jax.network_from_linen(module, variables, x0)
    nodes, _ = graph_nodes(net)
    d = 28 * 28
    layers = []
    for t, node in enumerate(nodes):
        W = node.materialise(t).reshape(-1, int(np.prod(node.shape)))  # the composite M^t, [n_{t-1}, n_t]
        layers.append((W, node.offset().reshape(-1)))
    layers.append((jnp.zeros((layers[-1][0].shape[1], 10)), jnp.zeros(10)))  # output: not counted
    xs = np.random.default_rng(1).uniform(0, 1, size=(n_points, 28, 28, 1)).astype(np.float32)
    flat = xs.reshape(n_points, d)
    pairs = n_points * len(RADII)
    dense_fn = jax.jit(jax.vmap(jax.vmap(lambda x, r: _dense_pair(layers, x, r), (None, 0)), (0, None)))
    runs = {
        "trace_network (structured)": lambda: local_bounds(net, xs, RADII, masks=False).num_unstable,
        "local_bounds(layers), dense": lambda: local_bounds(layers, flat, RADII, masks=False).num_unstable,
        "plain unpadded dense recursion": lambda: dense_fn(jnp.asarray(flat), jnp.asarray(RADII)),
    }
    counts = {k: np.asarray(f()) for k, f in runs.items()}
    times = {k: _time(lambda f=f: f().block_until_ready(), repeats) for k, f in runs.items()}
    structured = sum(d * _map_flops(node, t) + _map_flops(node, t) for t, node in enumerate(nodes) if t > 0)
    structured += d * sum(_map_flops(node, 0) for node in nodes[:1]) / max(pairs, 1)  # input map, once per call
    dense = sum(2.0 * W.shape[0] * W.shape[1] * (d + 1) for W, _ in layers[1:-1])
    flops = {"trace_network (structured)": structured, "local_bounds(layers), dense": dense,
             "plain unpadded dense recursion": dense}
    ref = counts["plain unpadded dense recursion"]
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; LeNet-5 on 28x28, "
          f"{n_points} points x {len(RADII)} radii; widths {[int(np.prod(n.shape)) for n in nodes]}; mean C {ref.mean():.1f}")
    print(f"{'form':32s} {'pairs/s':>9s} {'vs plain dense':>15s} {'GFLOP/pair':>11s} {'GFLOP/s':>9s} {'same C':>7s}")
    for k in runs:
        rate = pairs / times[k]
        print(f"{k:32s} {rate:9.1f} {rate / (pairs / times['plain unpadded dense recursion']):14.2f}x "
              f"{flops[k] / 1e9:11.3f} {flops[k] * rate / 1e9:9.1f} {str(bool(np.array_equal(counts[k], ref))):>7s}")


# ---------------------------------------------------------------------------
# --conv: paper and tight on convolutional nets, one fresh process per (net, method)


# Points (x 4 radii) per net: enough that a timed call of the fastest method takes a good fraction of a second.
_CONV_POINTS = {"LeNet-5": 16, "residual CNN": 128, "conv + BatchNorm": 256, "Flax MNIST CNN": 4, "LeNet-5 (Equinox)": 16}


def conv_child(name: str, method: str, n_points: int, repeats: int) -> dict:
    """One (net, method) cell of the ``--conv`` table, measured in this fresh process.

    The peak RSS is read after the first call, which compiles and bounds one
    ball (one point, one radius): the memory one ball needs, compilation
    included. Then ``n_points`` points x the four radii are timed warm.
    """
    net, shape = make_network(name, jax.random.PRNGKey(0))
    xs = np.random.default_rng(1).uniform(0, 1, size=(n_points,) + shape).astype(np.float32)
    base = _rss_bytes()
    local_bounds(net, xs[:1], RADII[:1], method=method, masks=False).num_unstable.block_until_ready()
    peak_ball = _peak_rss_bytes()

    def run():
        return local_bounds(net, xs, RADII, method=method, masks=False)

    out = run()
    t = _time(lambda: run().num_unstable.block_until_ready(), repeats)
    return {
        "net": name, "method": method, "relus": int(net.num_hidden), "pairs": n_points * len(RADII),
        "seconds_per_1k_pairs": 1000 * t / (n_points * len(RADII)),
        "peak_rss_one_ball": peak_ball, "base_rss": base,
        "mean_c": float(np.mean(out.num_unstable)), "mean_log2": float(np.mean(out.log2_bound)),
    }


def conv_step_child(n_points: int, n_radii: int) -> dict:
    """Peak RSS of a jitted training step that bounds ``n_points x n_radii`` balls of the Flax MNIST CNN (tight)."""
    import optax

    module = FlaxMNISTCNN()
    x0 = jnp.zeros((28, 28, 1), jnp.float32)
    params = module.init(jax.random.PRNGKey(0), x0)
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    xs = jnp.asarray(np.random.default_rng(1).uniform(0, 1, size=(n_points, 28, 28, 1)), jnp.float32)
    ys = jnp.arange(n_points) % 10
    radii = jnp.asarray(RADII[:n_radii])

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            logits = jax.vmap(lambda x: module.apply(p, x))(xs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
        net = lr_jax.network_from_linen(module, params, xs[0])
        c = local_bounds(net, xs, radii, method="tight", masks=False).num_unstable.mean()
        return params, opt_state, loss, c

    t0 = time.perf_counter()
    for _ in range(2):
        params, opt_state, loss, c = step(params, opt_state)
    jax.block_until_ready(c)
    return {"points": n_points, "radii": n_radii, "seconds_two_steps": time.perf_counter() - t0,
            "peak_rss": _peak_rss_bytes(), "mean_c": float(c)}


def _child_json(flag_args: list) -> dict:
    out = subprocess.run([sys.executable, __file__, *flag_args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {flag_args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def conv_main(args) -> None:
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"{platform.processor() or platform.machine()}; radii {[round(float(r), 3) for r in RADII]}; points uniform in [0, 1]; "
          f"Flax default init; one fresh process per cell")
    rows = []
    names = [n for n in CONV_NETS if not args.conv_nets or n in args.conv_nets.split(",")]
    print(f"{'net':18s} {'ReLUs':>7s} {'pairs':>6s} {'paper s/1k':>11s} {'tight s/1k':>11s} {'tight/paper':>12s} "
          f"{'paper RSS/ball':>15s} {'tight RSS/ball':>15s} {'mean C paper':>13s} {'mean C tight':>13s} {'mean log2 tight':>16s}")
    for name in names:
        points = args.conv_points or _CONV_POINTS[name]
        cells = {m: _child_json(["--conv-child", name, "--conv-method", m, "--conv-points", str(points),
                                 "--repeats", str(args.repeats)]) for m in ("paper", "tight")}
        p, t = cells["paper"], cells["tight"]
        rows.append(cells)
        print(f"{name:18s} {p['relus']:7d} {p['pairs']:6d} {p['seconds_per_1k_pairs']:11.2f} {t['seconds_per_1k_pairs']:11.2f} "
              f"{t['seconds_per_1k_pairs'] / p['seconds_per_1k_pairs']:11.2f}x {p['peak_rss_one_ball'] / 2**30:11.2f} GiB "
              f"{t['peak_rss_one_ball'] / 2**30:11.2f} GiB {p['mean_c']:13.1f} {t['mean_c']:13.1f} {t['mean_log2']:16.1f}",
              flush=True)
    if not args.conv_nets or "LeNet-5 (Equinox)" in args.conv_nets.split(","):
        # The same LeNet-5 written channels first (Equinox, NCHW): the paper bound against the linen row.
        e = _child_json(["--conv-child", "LeNet-5 (Equinox)", "--conv-method", "paper", "--conv-points",
                         str(args.conv_points or _CONV_POINTS["LeNet-5 (Equinox)"]), "--repeats", str(args.repeats)])
        print(f"{'LeNet-5 (Equinox)':18s} {e['relus']:7d} {e['pairs']:6d} {e['seconds_per_1k_pairs']:11.2f} "
              f"{'':11s} {'':12s} {e['peak_rss_one_ball'] / 2**30:11.2f} GiB {'':15s} {e['mean_c']:13.1f}   (channels first)")
        rows.append({"paper": e})
    if args.conv_step:
        st = _child_json(["--conv-step-child"])
        print(f"jitted training step of the Flax MNIST CNN bounding {st['points']} points x {st['radii']} radii (tight): "
              f"peak RSS {st['peak_rss'] / 2**30:.2f} GiB, two steps (compile included) {st['seconds_two_steps']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device.device_kind), "rows": rows}, indent=2))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper-points", type=int, default=2048)
    p.add_argument("--large-points", type=int, default=32)
    p.add_argument("--ref-points", type=int, default=64, help="points for the NumPy reference (paper net)")
    p.add_argument("--large-ref-points", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--scale", action="store_true", help="pairs/s and peak memory against N (see above)")
    p.add_argument("--scale-points", default="1000,10000,70000", help="comma-separated N values")
    p.add_argument("--scale-radii", default="0.1,0.2,0.4,0.8", help="comma-separated radii")
    p.add_argument("--max-seconds", type=float, default=120.0, help="--scale: longest timed call; else a prefix")
    p.add_argument("--chunk-size", type=int, default=None, help="--scale: pairs per chunk (default: kernel's)")
    p.add_argument("--scale-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--exact", action="store_true", help="rate of lr_jax.count_regions (regions/s, cone programs/s)")
    p.add_argument("--exact-radii", default="0.05,0.1,0.15", help="--exact: comma-separated radii")
    p.add_argument("--lenet", action="store_true", help="LeNet-5: traced vs dense matrices (see above)")
    p.add_argument("--lenet-points", type=int, default=4, help="--lenet: points (x 4 radii)")
    p.add_argument("--conv", action="store_true", help="paper vs tight on four conv nets: s/1k pairs, peak RSS per ball")
    p.add_argument("--conv-points", type=int, default=0, help="--conv: points (x 4 radii) for every net (default: per net)")
    p.add_argument("--conv-nets", default="", help="--conv: comma-separated subset of the nets")
    p.add_argument("--conv-step", action="store_true", help="--conv: also the jitted training step's peak RSS")
    p.add_argument("--conv-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--conv-method", default="paper", help=argparse.SUPPRESS)
    p.add_argument("--conv-step-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.conv_child is not None:
        print(json.dumps(conv_child(args.conv_child, args.conv_method, args.conv_points, args.repeats)))
        return
    if args.conv_step_child:
        print(json.dumps(conv_step_child(8, 2)))
        return
    if args.conv:
        conv_main(args)
        return
    if args.scale_child is not None:
        row = scale_child(args.scale_child, _parse_floats(args.scale_radii), args.max_seconds, args.chunk_size)
        print(json.dumps(row))
        return
    if args.scale:
        scale_main(args)
        return
    if args.exact:
        exact_main(_parse_floats(args.exact_radii))
        return
    if args.lenet:
        lenet_main(args.lenet_points, args.repeats)
        return

    rows = [bench("(a) 36-64-64-64-2", 36, [64, 64, 64], args.paper_points, args.ref_points, args.repeats)]
    if not args.skip_large:
        rows.append(
            bench("(b) 784-1024-1024-1024-10", 784, [1024, 1024, 1024], args.large_points, args.large_ref_points, args.repeats)
        )
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, {platform.processor() or platform.machine()}")
    head = (f"{'net':28s} {'pairs':>7s} {'jax pairs/s':>12s} {'traced pairs/s':>15s} {'numpy pairs/s':>14s} "
            f"{'speedup':>8s} {'GFLOP/s':>9s} {'matmul GFLOP/s':>15s} {'frac':>6s}")
    print(head)
    for r in rows:
        print(
            f"{r['net']:28s} {r['pairs']:7d} {r['jax_pairs_per_s']:12.0f} {r['traced_pairs_per_s']:15.0f} "
            f"{r['numpy_pairs_per_s']:14.1f} {r['speedup']:8.1f} {r['gflops']:9.1f} {r['matmul_gflops']:15.1f} "
            f"{r['fraction_of_matmul']:6.2f}" + ("" if r["traced_same_c"] else "  (traced C differs!)")
        )
    if args.json:
        args.json.write_text(json.dumps({"device": str(device.device_kind), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
