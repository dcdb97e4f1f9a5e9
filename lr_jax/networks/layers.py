"""The ``layers`` format every bound in lr_jax reads, its validation and converters.

A ReLU MLP is given as a sequence of ``(W, b)`` pairs, input to output, with
``W`` of shape ``[fan_in, fan_out]`` (the Flax ``Dense`` kernel layout) and
``b`` of shape ``[fan_out]``. Every pair but the last is followed by a ReLU;
the last pair is the linear output layer. Widths may differ between layers.

This module is pure: it never reads files. It validates shapes early (before
any tracing), so that a wrong model fails with a message naming the layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Layer = tuple[jax.Array, jax.Array]
Layers = tuple[Layer, ...]


def _is_concrete(a: Any) -> bool:
    return not isinstance(a, jax.core.Tracer)


def validate_layers(layers: Sequence[Layer]) -> Layers:
    """Checks the ``layers`` structure and returns it as a tuple of pairs.

    Raises:
      ValueError: with the offending layer index, when a weight is not 2-D, a
        bias does not match its kernel, consecutive layers disagree in width,
        there is no hidden layer, or a concrete weight holds NaN/inf.
    """
    if callable(layers) or not hasattr(layers, "__iter__"):
        raise ValueError(
            f"network must be `layers` ((W, b) pairs) or an lr_jax.Network, got {type(layers).__name__}; "
            "trace a function or module first: lr_jax.trace_network(apply_fn, params, example_x) or "
            "lr_jax.network_from_linen(module, variables, example_x)."
        )
    if isinstance(layers, Mapping):
        raise ValueError(
            "layers must be a sequence of (W, b) pairs, got a mapping; "
            "convert Flax params with lr_jax.layers_from_flax(params)."
        )
    if any(isinstance(item, Mapping) for item in layers):
        raise ValueError(
            "layers must be a sequence of (W, b) pairs, got a list of dicts; pass "
            "[(p['kernel'], p['bias']) for p in ...], or trace the model with lr_jax.trace_network / "
            "lr_jax.network_from_linen."
        )
    try:
        pairs = tuple((W, b) for W, b in layers)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "layers must be a sequence of (W [fan_in, fan_out], b [fan_out]) pairs; "
            f"could not unpack it ({e})."
        ) from None
    if len(pairs) < 2:
        raise ValueError(
            f"layers has {len(pairs)} (W, b) pair(s); need at least one hidden ReLU layer "
            "followed by the linear output layer (>= 2 pairs)."
        )
    prev_out = None
    for k, (W, b) in enumerate(pairs):
        w_shape, b_shape = np.shape(W), np.shape(b)
        if len(w_shape) != 2:
            raise ValueError(f"layer {k}: W must be 2-D [fan_in, fan_out], got shape {w_shape}.")
        if b_shape != (w_shape[1],):
            raise ValueError(
                f"layer {k}: b must have shape [fan_out] = ({w_shape[1]},) to match W {w_shape}, "
                f"got {b_shape}."
            )
        if prev_out is not None and w_shape[0] != prev_out:
            raise ValueError(
                f"layer {k}: W has fan_in {w_shape[0]} but layer {k - 1} has fan_out {prev_out}; "
                "consecutive layers must agree (W is [fan_in, fan_out], Flax layout; "
                "transpose PyTorch weights)."
            )
        for name, a in (("W", W), ("b", b)):
            if _is_concrete(a) and not np.all(np.isfinite(np.asarray(a))):
                raise ValueError(f"layer {k}: {name} contains NaN or inf.")
        prev_out = w_shape[1]
    return pairs


def hidden_widths(layers: Sequence[Layer]) -> tuple[int, ...]:
    """Widths of the hidden (ReLU) layers; the output layer is excluded."""
    return tuple(int(np.shape(W)[1]) for W, _ in layers[:-1])


def layers_from_flax(params: Mapping[str, Any]) -> Layers:
    """Turns the params of :class:`lr_jax.experiment.models.MLP` into ``layers``.

    Accepts either the full variables dict (``{"params": {...}}``) or the inner
    params dict, whose submodules are ``hidden_0 .. hidden_{n-1}`` and
    ``output``, each with ``kernel [fan_in, fan_out]`` and ``bias [fan_out]``.
    """
    p = params.get("params", params) if isinstance(params, Mapping) else None
    if not isinstance(p, Mapping):
        raise ValueError("layers_from_flax expects a Flax params mapping.")
    hidden = sorted(
        (k for k in p if k.startswith("hidden_")), key=lambda k: int(k.split("_")[1])
    )
    if not hidden or "output" not in p:
        raise ValueError(
            f"layers_from_flax expects submodules hidden_0..hidden_n and output (lr_jax.experiment.models.MLP); "
            f"got {sorted(p)}. For other Flax stacks use lr_jax.layers_from_sequential."
        )
    names = hidden + ["output"]
    return validate_layers([(p[n]["kernel"], p[n]["bias"]) for n in names])


def layers_from_numpy(weights: Sequence[Any], *, torch_layout: bool | None = None) -> Layers:
    """Builds ``layers`` from a flat list ``[W0, b0, W1, b1, ...]`` of arrays.

    Args:
      weights: kernels and biases alternating, input to output, e.g.
        ``[p.detach().numpy() for p in torch_model.parameters()]`` for a
        ``torch.nn.Sequential`` of ``Linear``/``ReLU``, or
        ``keras_model.get_weights()`` for a Keras stack of ``Dense(relu)``.
      torch_layout: required. True when kernels are ``[fan_out, fan_in]``
        (PyTorch ``Linear.weight``); they are transposed to the Flax layout.
        False for Keras or Flax kernels, already ``[fan_in, fan_out]``. It
        cannot be inferred: a square kernel fits both.

    Works on traced arrays (inside ``jit``): nothing is converted to NumPy.

    Raises:
      ValueError: when ``torch_layout`` is not given, the count is odd, or the
        shapes do not chain.
    """
    if torch_layout is None:
        raise ValueError(
            "layers_from_numpy needs torch_layout=True (PyTorch Linear.weight, [fan_out, fan_in]) or "
            "torch_layout=False (Keras/Flax kernels, [fan_in, fan_out]); the layout cannot be inferred "
            "from the shapes (a square kernel fits both)."
        )
    if any(isinstance(w, (tuple, list)) for w in weights):
        raise ValueError(
            "layers_from_numpy takes the flat list [W0, b0, W1, b1, ...]; a list of (W, b) pairs is "
            "already `layers`: pass it to the bounds directly."
        )
    if len(weights) % 2:
        raise ValueError(
            f"layers_from_numpy expects kernels and biases alternating, got an odd count {len(weights)}."
        )
    pairs = []
    for k in range(0, len(weights), 2):
        W, b = weights[k], weights[k + 1]
        if torch_layout and np.ndim(W) == 2:
            W = jnp.transpose(W) if isinstance(W, jax.Array) else np.transpose(W)
        pairs.append((W, b))
    return validate_layers(pairs)
