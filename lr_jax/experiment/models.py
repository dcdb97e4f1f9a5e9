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


# Kernel variance times fan_in of each named initialisation: N(0, scale / fan_in).
INIT_SCALES = {"lecun": 1.0, "he": 2.0}


def normal_init(init_std: float | None, init: str = "lecun"):
    """Kernel initialiser ``N(0, s^2)``.

    ``s^2 = 1 / fan_in`` for ``init="lecun"`` (LeCun normal, untruncated: keeps
    pre-activations of order one at every depth) and ``2 / fan_in`` for
    ``init="he"`` (He et al. 2015: keeps their second moment through ReLUs);
    a fixed ``init_std`` gives a plain ``N(0, init_std^2)`` whatever ``init``.
    """
    if init_std is None:
        return nn.initializers.variance_scaling(INIT_SCALES[init], "fan_in", "normal")
    return nn.initializers.normal(stddev=init_std)


class MLP(nn.Module):
    """ReLU MLP: ``x [B, d] -> logits [B, num_outputs]``.

    Attributes:
      depth: number of hidden ReLU layers (>= 1).
      width: units per hidden layer.
      num_outputs: logits of the linear output layer.
      init_std: kernel standard deviation; None for ``init_name``'s fan-in scaling.
      init_name: ``"lecun"`` (``N(0, 1/fan_in)``) or ``"he"`` (``N(0, 2/fan_in)``)
        (config ``model.init``; not ``init``, which is the Module's method).
    """

    depth: int
    width: int
    num_outputs: int = 2
    init_std: float | None = None
    init_name: str = "lecun"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = normal_init(self.init_std, self.init_name)
        for i in range(self.depth):
            x = nn.relu(nn.Dense(self.width, kernel_init=init, name=f"hidden_{i}")(x))
        return nn.Dense(self.num_outputs, kernel_init=init, name="output")(x)


def init_mlp(model: MLP, key: jax.Array, input_dim: int):
    """Initial params of ``model`` for inputs of dimension ``input_dim``."""
    return model.init(key, jnp.zeros((1, input_dim), jnp.float32))["params"]
