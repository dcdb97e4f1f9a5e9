"""Converters from common sequential model containers to the ``layers`` format.

The bounds of lr_jax read a ReLU MLP as ``(W [fan_in, fan_out], b [fan_out])``
pairs (:mod:`lr_jax.networks.layers`): affine, ReLU, affine, ReLU, ..., affine. This
module turns a container that computes exactly that function into ``layers``,
and refuses, with the offending layer's index and type, anything whose
function it cannot represent:

* :func:`layers_from_sequential`: a ``flax.linen.Sequential`` and its params;
* :func:`layers_from_nnx`: a ``flax.nnx.Sequential``.

Accepted, in the order ``Dense, relu, Dense, relu, ..., Dense``:

* ``nn.Dense`` / ``nnx.Linear``, with or without bias (``use_bias=False``
  gives a zero bias);
* ``nn.relu`` / ``nnx.relu`` / ``jax.nn.relu`` (one object); a run of several
  ReLUs is one ReLU, since ``relu(relu(x)) = relu(x)``;
* ``nn.Dropout`` / ``nnx.Dropout`` anywhere, skipped: the bound is about the
  network's function at inference, where dropout is the identity (a model
  applied with dropout active is a random function no fixed ``layers``
  describes);
* a nested ``Sequential`` of the same framework, flattened into its parent.

Refused (``ValueError``): any other activation (tanh, gelu, sigmoid, leaky_relu,
...) or callable, convolutions, normalisation layers (BatchNorm, LayerNorm:
their statistics are not an affine map fixed by the params alone), any other
module (residual blocks, custom modules), a ReLU before the first Dense, two
Dense with no ReLU between them, a ReLU after the last Dense, and a stack with
fewer than two Dense. Indices in messages are positions in ``layers`` of the
container, dotted for nested Sequentials (``2.1``).

Other frameworks convert through :func:`lr_jax.layers_from_numpy`, which
takes the flat list ``[W0, b0, W1, b1, ...]``:

* PyTorch ``nn.Sequential(nn.Linear, nn.ReLU, ..., nn.Linear)``:
  ``layers_from_numpy([p.detach().numpy() for p in m.parameters()],
  torch_layout=True)`` (``Linear.weight`` is ``[fan_out, fan_in]`` and is
  transposed; ``parameters()`` yields weight then bias, layer by layer; a
  ``Linear(bias=False)`` yields no bias, so insert zeros for it);
* Keras ``Sequential([Dense(units, activation="relu"), ..., Dense(out)])``:
  ``layers_from_numpy(model.get_weights(), torch_layout=False)`` (kernels already
  ``[fan_in, fan_out]``).

Neither checks the activations: that is the caller's responsibility there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lr_jax.networks.layers import Layers, validate_layers

_SUPPORTED = (
    "supported: {dense} and relu ({relu}), alternating {dense}, relu, ..., {dense}, "
    "plus Dropout (identity at inference) and nested Sequential"
)
_LINEN = _SUPPORTED.format(dense="Dense", relu="nn.relu / jax.nn.relu")
_NNX = _SUPPORTED.format(dense="Linear", relu="nnx.relu / jax.nn.relu")


class _Item(NamedTuple):
    """One layer of a flattened container: an affine map or a ReLU.

    Attributes:
      where: the layer's index in the container (dotted when nested).
      kind: ``"dense"`` or ``"relu"``.
      type_name: the layer's type, for error messages.
      kernel: ``[fan_in, fan_out]`` for ``"dense"``, else None.
      bias: ``[fan_out]`` for ``"dense"`` (zeros without bias), else None.
    """

    where: str
    kind: str
    type_name: str
    kernel: Any = None
    bias: Any = None


def _type_name(layer: Any) -> str:
    name = getattr(layer, "__name__", None)  # functions (relu, tanh); module instances have none
    return name if isinstance(name, str) else type(layer).__name__


def _unsupported(where: str, layer: Any, supported: str) -> ValueError:
    return ValueError(f"layer {where} ({_type_name(layer)}): not supported; {supported}.")


def _zero_bias(kernel):
    # jnp, not np: the kernel may be a tracer inside a caller's jit.
    return jnp.zeros(np.shape(kernel)[1], kernel.dtype)


def _assemble(items: list[_Item], dense: str, supported: str) -> Layers:
    """Checks the ``dense (relu dense)+`` order and pairs the affine maps.

    Args:
      items: the container's layers, flattened, dropout removed.
      dense: the framework's name of the affine layer, for messages.
      supported: what the framework's converter accepts, for messages.

    Raises:
      ValueError: naming the first layer out of order.
    """
    pairs = []
    expect_dense = True  # at the start and right after a ReLU
    prev = None
    for item in items:
        if item.kind == "dense":
            if not expect_dense:
                raise ValueError(
                    f"layer {item.where} ({item.type_name}): follows {dense} layer {prev.where} with no relu "
                    "between them; the bound needs a ReLU after every hidden affine layer. "
                    f"{supported}."
                )
            pairs.append((item.kernel, item.bias))
            expect_dense = False
        elif not pairs:
            raise ValueError(
                f"layer {item.where} ({item.type_name}): a relu before the first {dense} is not an affine "
                f"map of the input; {supported}."
            )
        else:
            expect_dense = True
        prev = item
    if prev is not None and prev.kind == "relu":
        raise ValueError(
            f"layer {prev.where} ({prev.type_name}): the stack ends with a relu; the last layer must be "
            f"a linear {dense} (the output layer). {supported}."
        )
    if len(pairs) < 2:
        raise ValueError(
            f"the stack has {len(pairs)} {dense} layer(s); need at least one hidden {dense} + relu "
            f"followed by the output {dense}."
        )
    return validate_layers(pairs)


# ---------------------------------------------------------------------------
# flax.linen


def _linen_items(bound_seq, prefix: str) -> Iterator[_Item]:
    for i, layer in enumerate(bound_seq.layers):
        where = f"{prefix}{i}"
        if layer is jax.nn.relu:
            yield _Item(where, "relu", "relu")
        elif isinstance(layer, nn.Dropout):
            continue
        elif isinstance(layer, nn.Sequential):
            yield from _linen_items(layer, f"{where}.")
        elif isinstance(layer, nn.Dense):
            yield _linen_dense(layer, where)
        else:
            raise _unsupported(where, layer, _LINEN)


def _linen_dense(layer, where: str) -> _Item:
    p = layer.variables.get("params", {})
    if "kernel" not in p or (layer.use_bias and "bias" not in p):
        raise ValueError(
            f"layer {where} (Dense): params hold no kernel/bias under {layer.name!r}; pass the variables "
            "of this very module (module.init(...) or a trained copy)."
        )
    kernel = p["kernel"]
    return _Item(where, "dense", "Dense", kernel, p["bias"] if layer.use_bias else _zero_bias(kernel))


def layers_from_sequential(module, params: Mapping[str, Any]) -> Layers:
    """Turns a ``flax.linen.Sequential`` of ``Dense`` and ``relu`` into ``layers``.

    Args:
      module: ``nn.Sequential([nn.Dense(m1), nn.relu, ..., nn.Dense(out)])``;
        see the module docstring for what else is accepted.
      params: its variables (``module.init(...)``) or the inner ``"params"``
        dict. Kernels are ``[fan_in, fan_out]``, biases ``[fan_out]``.

    Returns:
      ``layers``: one ``(W, b)`` pair per Dense, input to output; the same
      function as ``module.apply(params, x)``.

    Raises:
      ValueError: when ``module`` is not a linen Sequential, or a layer is
        unsupported or out of order (the message names its index and type).
    """
    if not isinstance(module, nn.Sequential):
        hint = " (for lr_jax.experiment.models.MLP use lr_jax.layers_from_flax(params))" if isinstance(module, nn.Module) else ""
        raise ValueError(f"layers_from_sequential expects a flax.linen.Sequential, got {_type_name(module)}{hint}.")
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be the module's variables mapping, got {type(params).__name__}.")
    variables = params if "params" in params else {"params": params}
    # Binding names the submodules as init did (layers_0, layers_2, ...), whatever
    # names they were built with, so each Dense finds its own kernel.
    return _assemble(list(_linen_items(module.bind(variables), "")), "Dense", _LINEN)


# ---------------------------------------------------------------------------
# flax.nnx


def _nnx_items(seq, prefix: str) -> Iterator[_Item]:
    for i, layer in enumerate(seq.layers):
        where = f"{prefix}{i}"
        if layer is jax.nn.relu:
            yield _Item(where, "relu", "relu")
        elif isinstance(layer, nnx.Dropout):
            continue
        elif isinstance(layer, nnx.Sequential):
            yield from _nnx_items(layer, f"{where}.")
        elif isinstance(layer, nnx.Linear):
            kernel = layer.kernel.get_value()
            bias = layer.bias.get_value() if layer.bias is not None else _zero_bias(kernel)
            yield _Item(where, "dense", "Linear", kernel, bias)
        else:
            raise _unsupported(where, layer, _NNX)


def layers_from_nnx(model) -> Layers:
    """Turns a ``flax.nnx.Sequential`` of ``Linear`` and ``relu`` into ``layers``.

    Args:
      model: ``nnx.Sequential(nnx.Linear(d, m1, rngs=...), nnx.relu, ...,
        nnx.Linear(m_H, out, rngs=...))``; its ``kernel [in, out]`` and
        ``bias [out]`` Params are read as they are now (e.g. after training).

    Returns:
      ``layers``: one ``(W, b)`` pair per Linear, input to output; the same
      function as ``model(x)``.

    Raises:
      ValueError: when ``model`` is not an nnx Sequential, or a layer is
        unsupported or out of order (the message names its index and type).
    """
    if not isinstance(model, nnx.Sequential):
        raise ValueError(f"layers_from_nnx expects a flax.nnx.Sequential, got {_type_name(model)}.")
    return _assemble(list(_nnx_items(model, "")), "Linear", _NNX)
