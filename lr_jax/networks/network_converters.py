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

from typing import Any, Callable

import numpy as np
from flax import errors as flax_errors
from flax import nnx

from lr_jax.networks.tracing import Network, trace_network


def _one_input(call: Callable, batch_axis: int | None) -> Callable:
    """``call(x)`` for one input; with ``batch_axis=0`` the model gets a batch of one and the axis is dropped."""
    if batch_axis is None:
        return call
    if batch_axis != 0:
        raise ValueError(f"batch_axis must be None (the model takes one input) or 0 (a batch first), got {batch_axis!r}.")
    return lambda x: call(x[None])[0]


def network_from_linen(module, variables, example_x, *, batch_axis: int | None = None, **apply_kwargs: Any) -> Network:
    """Traces ``module.apply(variables, x, **apply_kwargs)`` for one input.

    Args:
      module: a ``flax.linen.Module`` whose ``__call__`` maps one input (no
        batch axis, shape of ``example_x``) to the output, or, with
        ``batch_axis=0``, a batch ``[B, *example_x.shape]`` to ``[B, ...]``
        (the official Flax examples). Normalisation layers must be in eval
        mode (``BatchNorm(use_running_average=True)``).
      variables: ``module.init(...)`` or a trained copy (``{"params": ...}``
        plus any other collections such as ``batch_stats``).
      example_x: an array with the shape of one input (no batch axis).
      batch_axis: None (``__call__`` takes one input) or 0 (it takes a batch
        first: it is traced on a batch of one and the axis dropped).
      **apply_kwargs: static keyword arguments of ``__call__`` (e.g.
        ``train=False``).

    Returns:
      A :class:`lr_jax.Network` whose params are ``variables``.

    Raises:
      ValueError: the module updates a collection while applied (train-mode
        BatchNorm: pass its eval-mode arguments), its params were made for
        another input shape (a batch-first model: pass ``batch_axis=0``), or
        as :func:`lr_jax.trace_network`.
    """
    if apply_kwargs.get("mutable"):
        raise ValueError(
            f"network_from_linen: mutable={apply_kwargs['mutable']!r} makes the module update its variables; lr_jax bounds "
            "one fixed function of x: drop mutable and apply it in eval mode (e.g. train=False)."
        )

    def apply_fn(v, x):
        return _one_input(lambda x: module.apply(v, x, **apply_kwargs), batch_axis)(x)

    try:
        return trace_network(apply_fn, variables, example_x)
    except flax_errors.ModifyScopeVariableError as e:
        raise ValueError(
            f"network_from_linen: the module updates its variables while applied ({_first_line(e)}); lr_jax bounds one "
            "fixed function of x: apply it in eval mode (e.g. train=False, BatchNorm(use_running_average=True))."
        ) from None
    except flax_errors.ScopeParamShapeError as e:
        hint = (
            "if the module takes a batch [B, ...] first (as the Flax examples do), pass batch_axis=0"
            if batch_axis is None else "check that example_x has the shape of one input"
        )
        raise ValueError(
            f"network_from_linen: the variables do not fit an input of shape {tuple(np.shape(example_x))} "
            f"({_first_line(e)}); {hint}."
        ) from None


def _first_line(error: BaseException) -> str:
    """The message of a Flax error without its documentation link."""
    return str(error).split(" (https://")[0].strip().splitlines()[0]


def network_from_nnx(model, example_x, *, batch_axis: int | None = None) -> Network:
    """Traces a ``flax.nnx`` module's ``model(x)`` for one input.

    Args:
      model: an ``nnx.Module`` mapping one input to the output, or with
        ``batch_axis=0`` a batch ``[B, *example_x.shape]`` to ``[B, ...]``
        (the official NNX examples; call ``model.eval()`` first when it holds
        BatchNorm or Dropout).
      example_x: an array with the shape of one input (no batch axis).
      batch_axis: None (the model takes one input) or 0 (a batch first).

    Returns:
      A :class:`lr_jax.Network` whose params are the module's ``nnx.State``.
    """
    graphdef, state = nnx.split(model)

    def apply_fn(state, x):
        return _one_input(nnx.merge(graphdef, state), batch_axis)(x)

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
