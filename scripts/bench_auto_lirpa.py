"""auto_LiRPA's CROWN on the conv nets of ``bench_bound.py --conv``, same weights, same balls: ``python scripts/bench_auto_lirpa.py``.

An optional comparison, run in its own environment (auto_LiRPA needs PyTorch,
which lr_jax does not; auto_LiRPA's PyPI release 0.3 does not import with
current PyTorch, so it is installed from its repository)::

  python -m venv lirpa-venv && . lirpa-venv/bin/activate
  pip install torch==2.13.0 jax==0.10.2 jaxlib flax scipy
  pip install --no-deps git+https://github.com/Verified-Intelligence/auto_LiRPA  # 0.7.1 measured
  pip install "numpy<2.3" packaging appdirs pyyaml tqdm graphviz
  python scripts/bench_auto_lirpa.py [--repeats 3] [--nets LeNet-5,...]

Each net of ``tests/conv_nets.py`` is built with Flax's default init from key
0 (the weights ``bench_bound.py --conv`` bounds), copied into an equivalent
``torch.nn`` module (kernels transposed to ``OIHW``, features flattened in
Flax's ``HWC`` order), checked to give the same outputs, and bounded with
``BoundedModule.compute_bounds(method="CROWN")`` over the L2 ball (CROWN
bounds for every intermediate layer, as the tight bound computes) at the
points and radii of ``bench_bound.py --conv`` (uniform in ``[0, 1]``, seed 1;
radii 0.1, 0.2, 0.4, 0.8). Prints seconds per 1,000 (point, radius) pairs
(median over repeats, warm) and the mean number of neurons CROWN leaves
unstable. Thin script: everything here is the comparison's own setup.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RADII = (0.1, 0.2, 0.4, 0.8)
POINTS = {"LeNet-5": 16, "residual CNN": 128, "conv + BatchNorm": 256, "Flax MNIST CNN": 4}


def _torch_net(name: str):
    """``(torch module, flax apply, input shape HWC)`` of one net, weights from Flax's init with key 0."""
    import jax
    import jax.numpy as jnp
    import torch
    from torch import nn

    from tests.conv_nets import CONV_NETS

    cls, shape = CONV_NETS[name]
    module = cls()
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros(shape))
    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    stats = jax.tree_util.tree_map(np.asarray, variables.get("batch_stats", {}))

    def conv(q, padding):
        k = q["kernel"]  # [kh, kw, in, out]
        c = nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], padding=padding)
        c.weight.data = torch.tensor(k.transpose(3, 2, 0, 1).copy())
        c.bias.data = torch.tensor(q["bias"])
        return c

    def dense(q):
        k = q["kernel"]
        d = nn.Linear(*k.shape)
        d.weight.data = torch.tensor(k.T.copy())
        d.bias.data = torch.tensor(q["bias"])
        return d

    def bn(q, s):
        b = nn.BatchNorm2d(q["scale"].size, eps=1e-5)  # Flax's default epsilon
        b.weight.data, b.bias.data = torch.tensor(q["scale"]), torch.tensor(q["bias"])
        b.running_mean.data, b.running_var.data = torch.tensor(s["mean"]), torch.tensor(s["var"])
        return b

    class HWCFlatten(nn.Module):  # Flax flattens [H, W, C]
        def forward(self, x):
            return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)

    if name == "LeNet-5":
        net = nn.Sequential(conv(p["Conv_0"], 0), nn.ReLU(), nn.AvgPool2d(2), conv(p["Conv_1"], 0), nn.ReLU(),
                            nn.AvgPool2d(2), HWCFlatten(), dense(p["Dense_0"]), nn.ReLU(), dense(p["Dense_1"]),
                            nn.ReLU(), dense(p["Dense_2"]))
    elif name == "Flax MNIST CNN":
        net = nn.Sequential(conv(p["Conv_0"], 1), nn.ReLU(), nn.AvgPool2d(2), conv(p["Conv_1"], 1), nn.ReLU(),
                            nn.AvgPool2d(2), HWCFlatten(), dense(p["Dense_0"]), nn.ReLU(), dense(p["Dense_1"]))
    elif name == "conv + BatchNorm":
        net = nn.Sequential(conv(p["Conv_0"], 0), bn(p["BatchNorm_0"], stats["BatchNorm_0"]), nn.ReLU(),
                            nn.AvgPool2d(2), conv(p["Conv_1"], 0), bn(p["BatchNorm_1"], stats["BatchNorm_1"]),
                            nn.ReLU(), HWCFlatten(), dense(p["Dense_0"]))
    elif name == "residual CNN":
        class Res(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.c2, self.out = conv(p["Conv_0"], 1), conv(p["Conv_1"], 1), dense(p["Dense_0"])
                self.flat = HWCFlatten()

            def forward(self, x):
                h = torch.relu(self.c1(x))
                h = torch.relu(self.c2(h) + h)
                return self.out(self.flat(h))

        net = Res()
    else:
        raise SystemExit(f"unknown net {name!r}; one of {', '.join(POINTS)}")
    return net.eval(), (lambda x: module.apply(variables, x)), shape


def _unstable(model) -> float:
    """Mean over the batch of the pre-activations whose CROWN interval contains zero (strictly inside)."""
    from auto_LiRPA.operators import BoundRelu

    total = 0
    for node in model.nodes():
        if isinstance(node, BoundRelu):
            pre = node.inputs[0]
            total += ((pre.lower < 0) & (pre.upper > 0)).flatten(1).sum(1)
    return float(total.float().mean())


def bench(name: str, repeats: int) -> dict:
    import jax.numpy as jnp
    import torch
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    torch.set_num_threads(torch.get_num_threads())
    net, flax_apply, shape = _torch_net(name)
    xs = np.random.default_rng(1).uniform(0, 1, size=(POINTS[name],) + shape).astype(np.float32)
    x = torch.tensor(xs.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        gap = float(np.max(np.abs(net(x).numpy() - np.stack([np.asarray(flax_apply(jnp.asarray(v))) for v in xs]))))
    if gap > 1e-4:
        raise SystemExit(f"{name}: the torch copy differs from the Flax net by {gap:.2e}")
    model = BoundedModule(net, torch.zeros_like(x[:1]), device="cpu")
    unstable = []

    def run():
        unstable.clear()
        for r in RADII:
            model.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(norm=2, eps=r)),), method="CROWN")
            unstable.append(_unstable(model))

    run()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    pairs = len(xs) * len(RADII)
    return {"net": name, "pairs": pairs, "s_per_1k": 1000 * float(np.median(times)) / pairs,
            "mean_unstable": float(np.mean(unstable)), "gap": gap}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nets", default=",".join(POINTS), help="comma-separated subset of the nets")
    args = p.parse_args(argv)
    try:
        import auto_LiRPA
        import torch
    except ImportError as e:
        print(f"error: {e.name} is not installed: run this script in the environment described in its --help", file=sys.stderr)
        return 2
    print(f"auto_LiRPA {auto_LiRPA.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| net | pairs | auto_LiRPA CROWN s / 1k pairs | mean unstable (CROWN) | torch vs Flax max gap |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.nets.split(","):
        r = bench(name, args.repeats)
        print(f"| {r['net']} | {r['pairs']} | {r['s_per_1k']:.2f} | {r['mean_unstable']:.1f} | {r['gap']:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
