"""lr_jax: local complexity of ReLU networks in JAX.

Public API (stable):

* :func:`local_bound`, :func:`local_bounds`, :class:`LocalBound`: Algorithm 1 of
  Zhu, Lin & Tang, an upper bound on the number of linear regions meeting
  the ball ``B_r(x)``.
* :func:`single_region_radius`: a certified lower bound on the distance from a
  point to its nearest region boundary.
* :func:`layers_from_flax`, :func:`layers_from_numpy`: converters to the
  ``layers`` format (``(W [fan_in, fan_out], b [fan_out])`` pairs).
"""

from lr_jax.layers import layers_from_flax, layers_from_numpy, validate_layers
from lr_jax.local_bound import LocalBound, local_bound, local_bounds

__all__ = [
    "LocalBound",
    "layers_from_flax",
    "layers_from_numpy",
    "local_bound",
    "local_bounds",
    "validate_layers",
]
