"""Thin helpers that trace the common owners of params into a :class:`lr_jax.Network`.

Each picks the params out of its framework's model object and calls
:func:`lr_jax.trace_network` with an ``apply_fn(params, x)`` for one input:

* :func:`network_from_linen`: a ``flax.linen`` module and its variables
  (``params``, and ``batch_stats`` for BatchNorm in eval mode);
* :func:`network_from_nnx`: a ``flax.nnx`` module (``nnx.split``: its state
  is the params; call ``model.eval()`` first for BatchNorm / Dropout);
* :func:`network_from_equinox`: an Equinox module (``eqx.partition`` on
  ``eqx.is_array``: array leaves are params, the rest static).

The returned ``Network`` is a pytree of those params: build it inside a
jitted training step from the step's current params, and every bound sees
the current weights.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from lr_jax.networks.tracing import Network, trace_network


def network_from_linen(module, variables, example_x, **apply_kwargs: Any) -> Network:
    """Traces ``module.apply(variables, x, **apply_kwargs)`` for one input.

    Args:
      module: a ``flax.linen.Module`` whose ``__call__`` maps one input (no
        batch axis, shape of ``example_x``) to the output. Normalisation
        layers must be in eval mode (``BatchNorm(use_running_average=True)``).
      variables: ``module.init(...)`` or a trained copy (``{"params": ...}``
        plus any other collections such as ``batch_stats``).
      example_x: an array with the shape of one input.
      **apply_kwargs: static keyword arguments of ``__call__`` (e.g.
        ``train=False``).

    Returns:
      A :class:`lr_jax.Network` whose params are ``variables``.
    """
    def apply_fn(v, x):
        return module.apply(v, x, **apply_kwargs)

    return trace_network(apply_fn, variables, example_x)


def network_from_nnx(model, example_x) -> Network:
    """Traces a ``flax.nnx`` module's ``model(x)`` for one input.

    Args:
      model: an ``nnx.Module`` mapping one input to the output (call
        ``model.eval()`` first when it holds BatchNorm or Dropout).
      example_x: an array with the shape of one input.

    Returns:
      A :class:`lr_jax.Network` whose params are the module's ``nnx.State``.
    """
    graphdef, state = nnx.split(model)

    def apply_fn(state, x):
        return nnx.merge(graphdef, state)(x)

    return trace_network(apply_fn, state, example_x)


def network_from_equinox(model, example_x) -> Network:
    """Traces an Equinox module's ``model(x)`` for one input.

    Args:
      model: an ``equinox.Module`` mapping one input to the output, e.g.
        ``eqx.nn.MLP(..., activation=jax.nn.relu)`` or a custom module.
      example_x: an array with the shape of one input.

    Returns:
      A :class:`lr_jax.Network` whose params are the module's array leaves.

    Raises:
      ImportError: when Equinox is not installed (``pip install equinox``).
    """
    import equinox as eqx  # optional: only users of Equinox have it

    params, static = eqx.partition(model, eqx.is_array)

    def apply_fn(p, x):
        return eqx.combine(p, static)(x)

    return trace_network(apply_fn, params, example_x)
