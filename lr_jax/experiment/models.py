"""The Flax MLP of the paper's experiment (section 5.1).

``depth`` hidden ReLU layers of ``width`` units and a linear output layer,
kernels drawn from a normal distribution (the paper: "initialized by using the
normal distribution"). Submodules are named ``hidden_0 .. hidden_{depth-1}``
and ``output``, the layout :func:`lr_jax.layers_from_flax` reads.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def normal_init(init_std: float | None):
    """Kernel initialiser ``N(0, s^2)``; ``s = 1 / sqrt(fan_in)`` when ``init_std`` is None.

    ``1 / sqrt(fan_in)`` (LeCun normal, untruncated) keeps pre-activations of
    order one at every depth; a fixed ``init_std`` reproduces a plain
    ``N(0, init_std^2)`` initialisation.
    """
    if init_std is None:
        return nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    return nn.initializers.normal(stddev=init_std)


class MLP(nn.Module):
    """ReLU MLP: ``x [B, d] -> logits [B, num_outputs]``.

    Attributes:
      depth: number of hidden ReLU layers (>= 1).
      width: units per hidden layer.
      num_outputs: logits of the linear output layer.
      init_std: kernel standard deviation; None for ``1 / sqrt(fan_in)``.
    """

    depth: int
    width: int
    num_outputs: int = 2
    init_std: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = normal_init(self.init_std)
        for i in range(self.depth):
            x = nn.relu(nn.Dense(self.width, kernel_init=init, name=f"hidden_{i}")(x))
        return nn.Dense(self.num_outputs, kernel_init=init, name="output")(x)


def init_mlp(model: MLP, key: jax.Array, input_dim: int):
    """Initial params of ``model`` for inputs of dimension ``input_dim``."""
    return model.init(key, jnp.zeros((1, input_dim), jnp.float32))["params"]
