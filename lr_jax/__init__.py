"""lr_jax: local complexity of ReLU networks in JAX.

Public API (stable):

* :func:`local_bound`, :func:`local_bounds`, :class:`LocalBound`: Algorithm 1 of
  Zhu, Lin & Tang, an upper bound on the number of linear regions meeting
  the ball ``B_r(x)``; ``local_bounds(..., method="tight")`` and
  :func:`tight_bounds`: a tighter certified upper bound.
* :func:`single_region_radius`: a certified lower bound on the distance from a
  point to its nearest region boundary.
* :func:`sample_regions`: a lower bound (distinct activation patterns found by
  sampling the ball and walking chords exactly).
* :func:`frame_complexity`, :class:`FrameComplexity`: the cross-polytope
  estimate of Humayun et al. (neurons whose sign changes among the vertices
  ``x +- r u_i``), a lower estimate of ``C``.
* :func:`count_regions`, :class:`RegionCount`: the exact number of regions
  meeting a ball, for small networks (needs ``clarabel``; imported lazily).
* :func:`trace_network`, :class:`Network`: any piecewise-linear ReLU network
  written in JAX (dense, conv, average pooling, residual, eval-mode batch
  norm), traced from ``apply_fn(params, x)``; every bound accepts it where it
  accepts ``layers``. :func:`network_from_linen`, :func:`network_from_nnx`,
  :func:`network_from_equinox` trace the common owners of params.
* :func:`layers_from_flax`, :func:`layers_from_sequential`,
  :func:`layers_from_nnx`, :func:`layers_from_numpy`: converters to the
  ``layers`` format (``(W [fan_in, fan_out], b [fan_out])`` pairs).
"""

from lr_jax.bounds.core import LocalBound
from lr_jax.bounds.frame_complexity import FrameComplexity, frame_complexity
from lr_jax.bounds.local_bound import local_bound, local_bounds, tight_bounds
from lr_jax.bounds.sampled_regions import sample_regions
from lr_jax.bounds.single_region_radius import SingleRegionRadius, single_region_radius
from lr_jax.networks.layer_converters import layers_from_nnx, layers_from_sequential
from lr_jax.networks.layers import layers_from_flax, layers_from_numpy, validate_layers
from lr_jax.networks.network_converters import network_from_equinox, network_from_linen, network_from_nnx
from lr_jax.networks.tracing import Network, trace_network

import sys as _sys

from lr_jax.bounds import local_bound as _local_bound
from lr_jax.bounds import sampled_regions as _sampled_regions
from lr_jax.bounds import single_region_radius as _single_region_radius
from lr_jax.bounds import tight_bound as _tight_bound
from lr_jax.networks import layer_converters as _layer_converters
from lr_jax.networks import layers as _layers

# The modules' paths before the networks/bounds split still import (e.g.
# ``import lr_jax.tight_bound``): aliases of the moved modules.
for _name, _module in {
    "local_bound": _local_bound, "tight_bound": _tight_bound, "single_region_radius": _single_region_radius,
    "sampled_regions": _sampled_regions, "layers": _layers, "layer_converters": _layer_converters,
}.items():
    _sys.modules.setdefault(f"lr_jax.{_name}", _module)
    if _name not in globals():  # local_bound and single_region_radius stay the functions
        globals()[_name] = _module

_LAZY = {"count_regions": "lr_jax.bounds.exact_count", "RegionCount": "lr_jax.bounds.exact_count"}


def __getattr__(name):
    # The exact counter pulls in a conic solver; load it only when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lr_jax' has no attribute {name!r}")


__all__ = [
    "FrameComplexity",
    "LocalBound",
    "Network",
    "RegionCount",
    "SingleRegionRadius",
    "count_regions",
    "frame_complexity",
    "layers_from_flax",
    "layers_from_nnx",
    "layers_from_numpy",
    "layers_from_sequential",
    "local_bound",
    "local_bounds",
    "network_from_equinox",
    "network_from_linen",
    "network_from_nnx",
    "sample_regions",
    "single_region_radius",
    "tight_bounds",
    "trace_network",
    "validate_layers",
]
