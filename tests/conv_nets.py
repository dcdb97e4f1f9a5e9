"""Mid-size convolutional nets shared by the conv benchmark (``scripts/bench_bound.py --conv``) and the tests.

Each is a Flax linen module applied to ONE input (channels last), as a user
writes it; ``CONV_NETS`` maps a name to ``(module class, input shape)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class LeNet5(nn.Module):
    """Conv 6@5x5, average pool 2, conv 16@5x5, average pool 2, dense 120, dense 84 (28x28; 4,684 ReLUs)."""

    @nn.compact
    def __call__(self, x):  # [28, 28, 1]
        x = nn.relu(nn.Conv(6, (5, 5), padding="VALID")(x))  # [24, 24, 6]
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # [12, 12, 6]
        x = nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x))  # [8, 8, 16]
        x = nn.avg_pool(x, (2, 2), strides=(2, 2)).reshape(-1)  # [256]
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(10)(x)


class ResCNN(nn.Module):
    """Two SAME 3x3 convs of ``features`` channels, the second with a skip from the first (3,136 ReLUs at 14x14x8)."""

    features: int = 8

    @nn.compact
    def __call__(self, x):  # [14, 14, 1]
        h = nn.relu(nn.Conv(self.features, (3, 3))(x))
        h = nn.relu(nn.Conv(self.features, (3, 3))(h) + h)
        return nn.Dense(10)(h.reshape(-1))


class ConvBN(nn.Module):
    """Conv 8@3x3 + eval BatchNorm, average pool 2, conv 16@2x2 + eval BatchNorm (14x14; 1,552 ReLUs)."""

    @nn.compact
    def __call__(self, x):  # [14, 14, 1]
        h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(8, (3, 3), padding="VALID")(x)))  # [12, 12, 8]
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))  # [6, 6, 8]
        h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(16, (2, 2), padding="VALID")(h)))  # [5, 5, 16]
        return nn.Dense(10)(h.reshape(-1))


class FlaxMNISTCNN(nn.Module):
    """The CNN of Flax's MNIST example, on one input (37,888 ReLUs)."""

    @nn.compact
    def __call__(self, x):  # [28, 28, 1]
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(256)(x.reshape(-1)))
        return nn.Dense(10)(x)


def equinox_lenet5(key):
    """LeNet-5 written in Equinox: channels first (``[1, 28, 28]``), ``NCHW`` convolutions."""
    import equinox as eqx

    class EqxLeNet5(eqx.Module):
        c1: eqx.nn.Conv2d
        c2: eqx.nn.Conv2d
        d1: eqx.nn.Linear
        d2: eqx.nn.Linear
        d3: eqx.nn.Linear

        def __init__(self, key):
            k = jax.random.split(key, 5)
            self.c1 = eqx.nn.Conv2d(1, 6, 5, key=k[0])
            self.c2 = eqx.nn.Conv2d(6, 16, 5, key=k[1])
            self.d1 = eqx.nn.Linear(256, 120, key=k[2])
            self.d2 = eqx.nn.Linear(120, 84, key=k[3])
            self.d3 = eqx.nn.Linear(84, 10, key=k[4])

        def __call__(self, x):  # [1, 28, 28]
            pool = eqx.nn.AvgPool2d(2, 2)
            x = pool(jax.nn.relu(self.c1(x)))
            x = pool(jax.nn.relu(self.c2(x))).reshape(-1)
            return self.d3(jax.nn.relu(self.d2(jax.nn.relu(self.d1(x)))))

    return EqxLeNet5(key)


def make_network(name: str, key):
    """``(Network, input shape)`` of a net of ``CONV_NETS`` or ``"LeNet-5 (Equinox)"``, Flax / Equinox default init."""
    import lr_jax

    if name == "LeNet-5 (Equinox)":
        return lr_jax.network_from_equinox(equinox_lenet5(key), jnp.zeros((1, 28, 28))), (1, 28, 28)
    cls, shape = CONV_NETS[name]
    module, x0 = cls(), jnp.zeros(shape)
    return lr_jax.network_from_linen(module, module.init(key, x0), x0), shape


CONV_NETS = {
    "LeNet-5": (LeNet5, (28, 28, 1)),
    "residual CNN": (ResCNN, (14, 14, 1)),
    "conv + BatchNorm": (ConvBN, (14, 14, 1)),
    "Flax MNIST CNN": (FlaxMNISTCNN, (28, 28, 1)),
}
