"""Any piecewise-linear ReLU network written in JAX, as a graph of ReLU layers.

:func:`trace_network` traces ``apply_fn(params, x)`` for ONE input ``x`` to a
jaxpr and reads it as the bounds need it: ReLU layers ``t = 1 .. T`` (every
``relu`` / ``max(z, 0)`` the input reaches is one layer, in the shape of its
argument) and, for each, the affine map from its *sources* (the input, node
``0``, or earlier ReLU outputs) to its pre-activation::

    z_t = sum_{src} M_{src,t}^T h_src + c_t,        h_t = relu(z_t).

Everything between two ReLU layers must be affine in the input: dense and
general ``dot_general`` or convolutions with a constant operand, bias adds,
sums and differences of input-dependent values (residual connections),
products and quotients by constants (eval-mode batch norm), average pooling
(``reduce_window_sum``), reshapes, transposes, slices, padding,
concatenation, broadcasting, casts between float types. Operations that do
not depend on the input (computing a batch-norm scale from its parameters,
reshaping a kernel) are evaluated as they are. Anything else on the path from
the input to the output raises ``ValueError`` naming the primitive and the
line of the user's code it comes from.

The per-layer maps are evaluated by a small interpreter over the traced
equations, in four modes: the value (``apply``), the linear part on a batch
of tangent directions (``linear``: the map applied to the ``d`` input
directions of ``L``, a conv applied as a conv), its transpose (``backward``,
for backward bound propagation: a conv traced in the form whose transpose
runs fastest, often a banded matmul, see ``_conv_form``), and ``|M|^T u``
(``abs_linear``). The last
is computed without forming ``M`` by running the linear part with every
constant operand of a product replaced by its absolute value. That equals
``|M|^T u`` exactly when no two paths from one source element to one target
element can cancel, which holds when the equations from that source form a
chain ``C_1 .. C_a  G  R_1 .. R_b``: ``C_i`` maps in which every input element
reaches at most one output element (slices, reshapes, non-overlapping
pooling, sums over an axis), at most one general map ``G`` (a dense layer, a
conv), and ``R_i`` maps in which every output element reads at most one input
element (broadcasts, gathers). Then ``(R G C)_{ij}`` is a single product and
``|R G C| = |R| |G| |C|``. Other sources (two Dense layers in a row, a
residual branch summed with its own input inside one map, overlapping
pooling before a dense layer) get ``|M|`` materialised as a dense matrix
once per call: exact, and small for such composites.

:class:`Network` is a pytree: its leaves are the params (and arrays the
function closed over), its structure (the traced graph) is static and
compares by its text, so the same function traced twice is the same static
structure and nothing recompiles. It can be built and used inside a
caller's ``jit``, ``vmap``, ``grad`` or training step.
"""

from __future__ import annotations

import math
import os
import traceback
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

try:  # where an equation comes from, for error messages (no public API for it)
    from jax._src import source_info_util as _siu
except ImportError:  # pragma: no cover
    _siu = None

_HIGHEST = jax.lax.Precision.HIGHEST

# Calls whose body is inlined: they only group equations.
_CALLS = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}

# Linear maps of their one input-dependent operand; the class says how its
# elements connect (see the module docstring): "both" at most one each way,
# "row" each output reads one input, "col" each input reaches one output.
_STRUCTURAL = {
    "reshape": "both", "transpose": "both", "squeeze": "both", "expand_dims": "both",
    "convert_element_type": "both", "copy": "both", "copy_p": "both", "rev": "both",
    "slice": "both", "reduce_precision": "both", "neg": "both", "pad": "both",
    "dynamic_slice": "both", "split": "both",
    "broadcast_in_dim": "row", "gather": "row",
    "reduce_sum": "col", "cumsum": "general", "reduce_window_sum": None,  # decided by its window
}
_BILINEAR = {"dot_general", "conv_general_dilated", "mul"}
_SUMS = {"add", "sub", "add_any"}
_OTHER_LINEAR = {"div", "concatenate", "select_n"}
_CONTROL_FLOW = {"cond", "while", "scan", "switch", "for"}
_NONLINEAR_HINT = {
    "reduce_window_max": "max pooling is not supported (it is not an affine map between ReLU layers); "
    "use average pooling",
    "reduce_max": "a max over input-dependent values (a global max pool, or softmax's max "
    "subtraction) is not an affine map; bound the logits, before any softmax",
    "argmax": "argmax is not affine",
    "tanh": "tanh is not piecewise linear; only ReLU activations are supported",
    "logistic": "sigmoid is not piecewise linear; only ReLU activations are supported",
    "erf": "GELU (erf) is not piecewise linear; only ReLU activations are supported",
    "erfc": "GELU (erfc) is not piecewise linear; only ReLU activations are supported",
    "exp": "exp (softmax, ELU, ...) is not piecewise linear; bound the logits, before any softmax",
    "log": "log (log_softmax, ...) is not piecewise linear; bound the logits, before any softmax",
    "min": "min / clip is not supported; only relu(z) = max(z, 0) is",
    "clamp": "clip / relu6 is not supported; only relu(z) = max(z, 0) is",
}
for _cmp in ("gt", "lt", "ge", "le", "eq", "ne"):
    _NONLINEAR_HINT[_cmp] = "a comparison of input-dependent values (control flow or a mask that depends on the input)"
_STATS_PRIMS = {"integer_pow", "square", "rsqrt", "sqrt"}
_STATS_HINT = (
    " (a power or root of an input-dependent value: GELU's tanh approximation, or a normalisation "
    "layer computing batch statistics; apply BatchNorm in eval mode: use_running_average=True in "
    "linen, model.eval() in NNX, inference mode in Equinox)"
)
# Random values reaching the input's path: dropout (or noise) left active.
_RANDOM = {"random_bits", "threefry2x32", "rng_bit_generator", "rng_uniform", "random_wrap", "random_seed",
           "random_fold_in", "random_split"}


class _Lit(NamedTuple):
    """A literal operand of an equation."""

    value: Any


class _Eqn(NamedTuple):
    prim: Any  # the jax Primitive
    ins: tuple  # var ids (int) or _Lit
    outs: tuple  # var ids
    params: dict
    where: str


class _Cone(NamedTuple):
    """The equations computing one ReLU layer's pre-activation (or the output) from its sources."""

    eqns: tuple  # indices into _Graph.eqns, in order
    target: int  # var id of the pre-activation
    sources: tuple  # node ids (0 = input, t = ReLU layer t)
    source_vars: tuple  # var ids of the sources, aligned with ``sources``
    abs_exact: tuple  # per source: |M|^T u by the abs interpreter is exact


def _where(eqn, outer: str = "") -> str:
    """``file:line (function)`` of the first frame outside jax/flax/equinox, plus the module path.

    Equations inside a library's jitted helper (``jax.nn.leaky_relu``) have no
    user frame of their own: they get ``outer``, the location of the call.
    """
    text = ""
    if _siu is not None:
        try:
            frames = list(_siu.user_frames(eqn.source_info.traceback))
            lib = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)
            user = [f for f in frames if not any(s in f.file_name for s in lib)]
            f = user[0] if user else None
            if f is not None:
                text = f"{f.file_name}:{f.start_line} ({f.function_name})"
        except Exception:  # noqa: BLE001 - best effort: the message is still useful without it
            text = ""
        if not text and outer:
            return outer
        stack = str(getattr(eqn.source_info, "name_stack", "") or "")
        if stack:
            text = f"{text} [{stack}]" if text else f"[{stack}]"
    return text or outer or "an unknown location"


def _flatten(closed, in_ids, counter, eqns, consts, shapes, outer: str = ""):
    """Inlines nested calls; appends ``_Eqn`` records to ``eqns``; returns the out refs."""
    jaxpr = closed.jaxpr if isinstance(closed, jcore.ClosedJaxpr) else closed
    env = {}
    inner_consts = closed.consts if isinstance(closed, jcore.ClosedJaxpr) else []
    for v, c in zip(jaxpr.constvars, inner_consts):
        cid = next(counter)
        consts.append((cid, c))
        env[v] = cid
    for v, ref in zip(jaxpr.invars, in_ids):
        env[v] = ref

    def read(v):
        if isinstance(v, jcore.Literal):
            return _Lit(v.val)
        return env[v]

    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        ins = tuple(read(v) for v in eqn.invars)
        if name in _CALLS and _CALLS[name] in eqn.params:
            sub = eqn.params[_CALLS[name]]
            outs = _flatten(sub, ins, counter, eqns, consts, shapes, _where(eqn, outer))
            for v, ref in zip(eqn.outvars, outs):
                env[v] = ref
            continue
        out_ids = []
        for v in eqn.outvars:
            i = next(counter)
            out_ids.append(i)
            shapes[i] = tuple(v.aval.shape)
            if not isinstance(v, jcore.DropVar):
                env[v] = i
        eqns.append(_Eqn(eqn.primitive, ins, tuple(out_ids), dict(eqn.params), _where(eqn, outer)))
    return [read(v) for v in jaxpr.outvars]


def _is_zero_literal(ref) -> bool:
    if not isinstance(ref, _Lit):
        return False
    try:  # a literal is a concrete constant; NumPy keeps it out of any enclosing trace
        v = np.asarray(ref.value)
        return v.size == 1 and float(v.reshape(())) == 0.0
    except Exception:  # noqa: BLE001
        return False


def _error(eqn: _Eqn, why: str) -> ValueError:
    return ValueError(
        f"trace_network: '{eqn.prim.name}' at {eqn.where}: {why}. The bounds need a piecewise-linear "
        "ReLU network: affine maps (dense, conv, average pooling, residual sums, eval-mode batch norm, "
        "reshapes) between relu / max(z, 0) activations."
    )


class _Graph:
    """The static structure of a traced network (hashable; compares by the jaxpr's text)."""

    def __init__(self, closed, n_params: int, x_aval, out_shape, key: str):
        self.key = key
        counter = iter(range(10**9))
        self.param_ids = tuple(next(counter) for _ in range(n_params))
        self.x_id = next(counter)
        eqns: list[_Eqn] = []
        consts: list = []
        self.shapes = {self.x_id: tuple(x_aval.shape)}
        outs = _flatten(closed, list(self.param_ids) + [self.x_id], counter, eqns, consts, self.shapes)
        self.const_ids = tuple(c for c, _ in consts)
        self.const_values = [c for _, c in consts]
        self.eqns = tuple(eqns)
        if len(outs) != 1 or isinstance(outs[0], _Lit):
            raise ValueError(
                f"trace_network: apply_fn must return one array that depends on x, got {len(outs)} outputs."
            )
        self.out_id = outs[0]
        self.x_shape = tuple(x_aval.shape)
        self.x_dtype = x_aval.dtype
        self.out_shape = tuple(out_shape)
        self._analyse()

    # -- analysis --------------------------------------------------------------

    def _analyse(self):
        dep = {self.x_id}
        zeros = set()
        random = set()
        producer = {}
        relus = []  # (z_id, h_id, eqn index)
        shapes = {self.x_id: self.x_shape}
        for k, eqn in enumerate(self.eqns):
            for o in eqn.outs:
                producer[o] = k
            dep_in = [i for i, r in enumerate(eqn.ins) if not isinstance(r, _Lit) and r in dep]
            name = eqn.prim.name
            if not dep_in:
                if name in _RANDOM or any(not isinstance(r, _Lit) and r in random for r in eqn.ins):
                    random.update(eqn.outs)
                # Constants of x: zeros are remembered to recognise max(z, zeros).
                first = eqn.ins[0] if eqn.ins else None
                if name in ("broadcast_in_dim", "convert_element_type", "reshape") and (
                    _is_zero_literal(first) or (first is not None and not isinstance(first, _Lit) and first in zeros)
                ):
                    zeros.update(eqn.outs)
                continue
            if any(not isinstance(r, _Lit) and r in random for r in eqn.ins):
                raise _error(
                    eqn, "a random value enters the path from the input (dropout or noise left active?); "
                    "apply the model in eval mode: deterministic=True in linen, model.eval() in NNX, "
                    "inference=True in Equinox"
                )
            self._check(eqn, dep_in, zeros)
            dep.update(eqn.outs)
            if name == "max":
                z = eqn.ins[dep_in[0]]
                relus.append((z, eqn.outs[0], k))
        self.dep = frozenset(dep)
        self.producer = producer
        if self.out_id not in dep:
            raise ValueError("trace_network: the output of apply_fn does not depend on x.")
        if not relus:
            raise ValueError(
                "trace_network: no ReLU on the path from the input to the output; the network is affine "
                "(one region everywhere). Apply relu / jnp.maximum(z, 0) between its layers."
            )
        self.relu_z = tuple(z for z, _, _ in relus)
        self.relu_h = tuple(h for _, h, _ in relus)
        node_of = {self.x_id: 0}
        node_of.update({h: t for t, h in enumerate(self.relu_h, start=1)})
        self.node_of = node_of
        self.cones = tuple(self._cone(z) for z in self.relu_z)
        self.out_cone = self._cone(self.out_id)
        self.layer_shapes = tuple(self._shape_of(z) for z in self.relu_z)

    def _shape_of(self, var_id) -> tuple:
        return self.shapes[var_id]

    def _check(self, eqn: _Eqn, dep_in: list, zeros: set) -> None:
        name = eqn.prim.name
        if name == "max":
            other = eqn.ins[1 - dep_in[0]] if len(eqn.ins) == 2 else None
            if len(dep_in) == 1 and other is not None and (
                _is_zero_literal(other) or (not isinstance(other, _Lit) and other in zeros)
            ):
                return
            raise _error(eqn, "max of input-dependent values other than relu(z) = max(z, 0)")
        if name in _STRUCTURAL:
            if dep_in != [0]:
                raise _error(eqn, "an index, padding value or shape that depends on the input")
            if name == "convert_element_type" and not jnp.issubdtype(eqn.params.get("new_dtype"), jnp.floating):
                raise _error(eqn, "a cast of an input-dependent value to a non-float type")
            return
        if name in _BILINEAR:
            if len(dep_in) == 2:
                raise _error(eqn, "a product of two input-dependent values" + _STATS_HINT)
            return
        if name in _SUMS:
            return
        if name == "div":
            if dep_in != [0]:
                raise _error(eqn, "a division by an input-dependent value")
            return
        if name == "concatenate":
            return
        if name == "select_n":
            if 0 in dep_in:
                raise _error(eqn, "a selection whose condition depends on the input (control flow on x)")
            return
        if name in _CONTROL_FLOW:
            raise _error(eqn, "control flow that depends on the input (unroll it, or keep it off the path from x)")
        if name in _NONLINEAR_HINT:
            raise _error(eqn, _NONLINEAR_HINT[name])
        if name in _STATS_PRIMS:
            raise _error(eqn, "not affine in the input" + _STATS_HINT)
        raise _error(eqn, "not supported on the path from the input to the output")

    def _cone(self, target) -> _Cone:
        cut = set(self.relu_h) | {self.x_id}
        if target in cut:  # relu(relu(z)), relu(x), or an output that is a ReLU layer itself: the identity map
            return _Cone((), target, (self.node_of[target],), (target,), (True,))
        members, sources = set(), set()
        stack = [target]
        seen = set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in cut and v != target:
                sources.add(v)
                continue
            k = self.producer[v]
            members.add(k)
            for r in self.eqns[k].ins:
                if not isinstance(r, _Lit) and r in self.dep:
                    stack.append(r)
        eqns = tuple(sorted(members))
        src_vars = tuple(sorted(sources, key=lambda v: self.node_of[v]))
        exact = tuple(self._abs_exact(eqns, s, target) for s in src_vars)
        return _Cone(eqns, target, tuple(self.node_of[v] for v in src_vars), src_vars, exact)

    def _abs_exact(self, cone_eqns, source, target) -> bool:
        """Whether the equations from ``source`` to ``target`` form a cancellation-free chain."""
        reach = {source}
        state = 0  # 0: only "col"/"both" so far; 1: after the general map or a "row" map
        for k in cone_eqns:
            eqn = self.eqns[k]
            hits = [r for r in eqn.ins if not isinstance(r, _Lit) and r in reach]
            if not hits:
                continue
            if len(hits) > 1:
                return False  # two paths from the source meet: they may cancel
            for o in eqn.outs:
                reach.add(o)
            kind = self._kind(eqn)
            if kind == "both":
                continue
            if kind == "col" and state == 0:
                continue
            if kind in ("row", "general") and state == 0:
                state = 1
                continue
            if kind == "row" and state == 1:
                continue
            return False
        # Every value from the source is used once: a value read twice is a fork.
        uses = {}
        for k in cone_eqns:
            for r in self.eqns[k].ins:
                if not isinstance(r, _Lit) and r in reach:
                    uses[r] = uses.get(r, 0) + 1
        return all(n <= 1 for n in uses.values())

    def local(self, cone: _Cone) -> bool:
        """Whether a cone's linear map commutes with translations of its spatial axes.

        True when every equation from the sources is a convolution (one group,
        no input dilation), a window sum (no base dilation), a sum or
        difference, a negation or float cast, a transpose, a reshape that only
        adds or drops axes of size 1, or a product / quotient by a constant that varies at
        most along the feature axis of the convolution before it (a bias, an
        eval-mode batch norm). Such a map is the same stencil at every
        position of a zero-padded input, which is what the receptive-field
        form of the bound propagation (:mod:`lr_jax.bounds.receptive_fields`)
        relies on. Anything else (a dense layer, a reshape that flattens,
        a spatially varying scale) returns False.
        """
        feature = {v: None for v in cone.source_vars}
        for k in cone.eqns:
            eqn = self.eqns[k]
            dep = [i for i, r in enumerate(eqn.ins) if not isinstance(r, _Lit) and r in self.dep]
            if not dep:
                continue
            name = eqn.prim.name
            known = {feature.get(eqn.ins[i]) for i in dep} - {None}
            if len(known) > 1:
                return False
            f = next(iter(known), None)
            out_shape = self.shapes[eqn.outs[0]]
            if name == "conv_general_dilated":
                p = eqn.params
                if dep != [0] or p["feature_group_count"] != 1 or p["batch_group_count"] != 1:
                    return False
                if any(d != 1 for d in p["lhs_dilation"]):
                    return False
                f = p["dimension_numbers"].out_spec[1]
            elif name == "reduce_window_sum":
                if any(d != 1 for d in eqn.params["base_dilation"]):
                    return False
            elif name in _SUMS:
                if any(self.shapes[eqn.ins[i]] != out_shape for i in dep):
                    return False
            elif name in ("convert_element_type", "copy", "copy_p", "reduce_precision", "neg"):
                pass
            elif name in ("reshape", "squeeze", "expand_dims", "broadcast_in_dim"):
                in_shape = self.shapes[eqn.ins[dep[0]]]
                if [n for n in in_shape if n != 1] != [n for n in out_shape if n != 1]:
                    return False
                if f is not None:
                    f = _map_axis(f, in_shape, out_shape)
            elif name == "transpose":
                if f is not None:
                    f = tuple(eqn.params["permutation"]).index(f)
            elif name in ("mul", "div"):
                if len(dep) != 1 or len(eqn.ins) != 2 or (name == "div" and dep != [0]):
                    return False
                const = eqn.ins[1 - dep[0]]
                c_shape = np.shape(const.value) if isinstance(const, _Lit) else self.shapes[const]
                lead = len(out_shape) - len(c_shape)
                varying = [lead + a for a, n in enumerate(c_shape) if n != 1]
                if varying and (len(varying) > 1 or varying[0] != f):
                    return False
            else:
                return False
            feature[eqn.outs[0]] = f
        return True

    def _kind(self, eqn: _Eqn) -> str:
        name = eqn.prim.name
        if name in _SUMS or name in ("div", "concatenate", "select_n", "mul"):
            return "both"
        if name == "reduce_window_sum":
            p = eqn.params
            disjoint = all(s >= w for s, w in zip(p["window_strides"], p["window_dimensions"]))
            plain = all(x == 1 for x in p["base_dilation"]) and all(x == 1 for x in p["window_dilation"])
            return "col" if disjoint and plain else "general"
        if name == "broadcast_in_dim" and math.prod(self.shapes[eqn.ins[0]]) == math.prod(eqn.params["shape"]):
            return "both"  # only adds axes of size 1: a reshape
        if name in _STRUCTURAL:
            return _STRUCTURAL[name]
        return "general"

    # -- equality (static structure of the pytree) --------------------------------

    def __eq__(self, other):
        return isinstance(other, _Graph) and other.key == self.key

    def __hash__(self):
        return hash(self.key)


def _eval_eqn(eqn: _Eqn, vals, transposing: bool = False):
    """Bind one equation; a convolution runs channels-last, in the form :func:`_conv_form` picks."""
    if eqn.prim.name == "conv_general_dilated":
        return [_conv_channels_last(eqn.params, *vals, transposing=transposing)]
    out = eqn.prim.bind(*vals, **eqn.params)
    return out if eqn.prim.multiple_results else [out]


# Convolutions reading at most this many input features run as shifted slices and one matmul.
_TAPS_MAX_FEATURES = 4
# A conv traced to be transposed whose input and output features are both at least this many
# runs as XLA's convolution: its transpose then runs near matmul speed on XLA's CPU.
_XLA_MIN_FEATURES = 32
# XLA-CPU cost of one shifted-add element in matmul flops (the transposes' cost model, _conv_form):
# about 0.9 ns an element against 7.5 ps a flop, measured on the transposes of small-channel convs.
_ADD_FLOPS = 120


def _conv_form(params: dict, lhs_shape: tuple, rhs_shape: tuple, transposing: bool = False) -> str:
    """How a channels-last conv (``lhs [N, *S, I]``, kernel ``[*window, I, O]``) is evaluated.

    ``"xla"`` (XLA's convolution), ``"taps"`` (:func:`_conv_by_taps`) or
    ``"rows"`` (:func:`_conv_by_rows`): the same map, in forms whose cost on
    XLA's CPU differs. A conv run forward (values, ``d`` input directions)
    runs by taps when it reads at most ``_TAPS_MAX_FEATURES`` features, else
    as XLA's. A conv traced only to be transposed (``transposing``:
    :meth:`GraphNode.backward`, the tight bound's rows) runs as XLA's when
    ``I`` and ``O`` are both at least ``_XLA_MIN_FEATURES``; otherwise
    XLA's transposed convolution runs far below matmul speed (4 to 8 times
    slower than the better form on LeNet-5's convs, measured), and the form
    whose transpose costs least by the model ``F + _ADD_FLOPS * E`` is
    taken: ``F`` the matmul's flops, ``E`` the elements of its shifted adds,
    per row, ``2 |out| |window| I O`` and ``|window| |out| I`` by taps,
    ``2 |out'| |window'| W_in I W_out O`` and ``|window'| |out'| W_in I``
    by rows (``'``: without the last spatial axis, ``W`` its size).
    """
    plain = (
        params["feature_group_count"] == 1
        and params["batch_group_count"] == 1
        and all(d == 1 for d in params["lhs_dilation"])
        and all(lo >= 0 and hi >= 0 for lo, hi in params["padding"])
    )
    features_in, features_out = rhs_shape[-2], rhs_shape[-1]
    if not plain:
        return "xla"
    if not transposing:
        return "taps" if features_in <= _TAPS_MAX_FEATURES else "xla"
    if min(features_in, features_out) >= _XLA_MIN_FEATURES:
        return "xla"
    nd = len(lhs_shape) - 2
    if nd == 0:  # no spatial axis: the taps form is one matmul
        return "taps"
    window = rhs_shape[:nd]
    strides, dilation = params["window_strides"], params["rhs_dilation"]
    out = [(lhs_shape[1 + i] + sum(params["padding"][i]) - (window[i] - 1) * dilation[i] - 1) // strides[i] + 1
           for i in range(nd)]
    io = features_in * features_out
    taps = 2 * math.prod(out) * math.prod(window) * io + _ADD_FLOPS * math.prod(window) * math.prod(out) * features_in
    lead = math.prod(out[:-1]) * math.prod(window[:-1]) * lhs_shape[nd] * features_in
    rows = 2 * lead * out[-1] * features_out + _ADD_FLOPS * lead
    return "rows" if rows < taps else "taps"


def _conv_by_taps(lhs, rhs, params: dict):
    """A channels-last convolution as a sum over the window's taps: shifted strided slices, then one matmul.

    ``y[n, q, o] = sum_{tap, i} x_pad[n, q * stride + tap * dilation, i] K[tap, i, o]``:
    the same numbers as the convolution (up to the order of the sum). On a
    network's first layer (an image with 1 to 4 channels) XLA's CPU
    convolution is slow, and slower still for its transpose, the step that
    moves the tight bound's rows onto the input (a transposed conv with one
    output feature); written as slices and a matmul, JAX transposes it into a
    matmul and pads, several times faster.
    """
    nd = lhs.ndim - 2
    strides, dilation = params["window_strides"], params["rhs_dilation"]
    x = jnp.pad(lhs, [(0, 0)] + [tuple(p) for p in params["padding"]] + [(0, 0)])
    window = rhs.shape[:nd]
    out = [(x.shape[1 + i] - (window[i] - 1) * dilation[i] - 1) // strides[i] + 1 for i in range(nd)]
    cols = []
    for tap in np.ndindex(*window):
        start = [0] + [tap[i] * dilation[i] for i in range(nd)] + [0]
        limit = [x.shape[0]] + [start[1 + i] + (out[i] - 1) * strides[i] + 1 for i in range(nd)] + [x.shape[-1]]
        cols.append(jax.lax.slice(x, start, limit, [1] + list(strides) + [1]))
    patches = jnp.concatenate(cols, axis=-1)  # [N, *out, taps * I], taps major as in the kernel
    kernel = rhs.reshape(-1, rhs.shape[-1])
    y = jnp.matmul(patches, kernel, precision=_HIGHEST, preferred_element_type=params.get("preferred_element_type"))
    return y.astype(jnp.result_type(lhs.dtype, rhs.dtype)) if params.get("preferred_element_type") is None else y


def _conv_by_rows(lhs, rhs, params: dict):
    """A channels-last convolution as taps over the leading spatial axes and one banded matmul over the last.

    With ``x`` the last spatial axis and the others' taps ``tap'``,
    ``y[n, q', q, o] = sum_{tap', x, i} x_pad[n, q' * stride + tap' * dilation, x, i] T[tap', x, i, q, o]``,
    ``T[tap', x, i, q, o] = K[tap', t, i, o]`` where output ``q``'s tap ``t``
    reads ``x = q * s - pad_lo + t * dil`` (else 0: the last axis' padding
    reads nothing). Each entry of ``T`` is one kernel entry or 0 (one ``t``
    per ``(x, q)``), so ``T`` is exact; the sums are the convolution's, in
    another order. Its transpose (what :meth:`GraphNode.backward` runs) is
    one matmul ``rows[..., q, o] @ T^T`` and a shifted add per leading tap
    along the leading axes, whole rows ``(x, i)`` at a time: several times
    faster on XLA's CPU than the transposed convolution, or than the taps
    form's transpose (25 shifted adds of ``I`` features each for a 5x5
    window), although ``T`` has ``W_in / window`` times the kernel's flops.
    """
    nd = lhs.ndim - 2
    strides, dilation = params["window_strides"], params["rhs_dilation"]
    window, w_in = rhs.shape[:nd], lhs.shape[nd]
    (pad_lo, pad_hi), s, dil, kw = params["padding"][-1], strides[-1], dilation[-1], window[-1]
    w_out = (w_in + pad_lo + pad_hi - (kw - 1) * dil - 1) // s + 1
    band = np.zeros((kw, w_in, w_out))  # band[t, x, q] = 1 where output q's tap t reads input x
    for t in range(kw):
        for q in range(w_out):
            xi = q * s - pad_lo + t * dil
            if 0 <= xi < w_in:
                band[t, xi, q] = 1.0
    banded = jnp.einsum("...tio,txq->...xiqo", rhs, jnp.asarray(band, rhs.dtype), precision=_HIGHEST)
    x = jnp.pad(lhs, [(0, 0)] + [tuple(p) for p in params["padding"][:-1]] + [(0, 0), (0, 0)])
    out = [(x.shape[1 + i] - (window[i] - 1) * dilation[i] - 1) // strides[i] + 1 for i in range(nd - 1)]
    cols = []
    for tap in np.ndindex(*window[:-1]):
        start = [0] + [tap[i] * dilation[i] for i in range(nd - 1)] + [0, 0]
        ends = [start[1 + i] + (out[i] - 1) * strides[i] + 1 for i in range(nd - 1)]
        limit = [x.shape[0]] + ends + list(x.shape[-2:])
        piece = jax.lax.slice(x, start, limit, [1] + list(strides[:-1]) + [1, 1])
        cols.append(piece.reshape(piece.shape[:-2] + (-1,)))
    patches = jnp.concatenate(cols, axis=-1)  # [N, *out', taps' * W_in * I], taps' major as in the kernel
    y = jnp.matmul(patches, banded.reshape(-1, w_out * rhs.shape[-1]), precision=_HIGHEST,
                   preferred_element_type=params.get("preferred_element_type"))
    y = y.reshape(y.shape[:-1] + (w_out, rhs.shape[-1]))
    return y.astype(jnp.result_type(lhs.dtype, rhs.dtype)) if params.get("preferred_element_type") is None else y


def _conv_for_transpose(lhs, rhs, params: dict):
    """XLA's channels-last convolution, traced only to be transposed, with its kernel stored ``[*window, O, I]``.

    The transpose of a convolution with respect to its input is a
    convolution reading the kernel with input and output features swapped
    (and the window reversed). From an ``HWIO`` kernel XLA-CPU then reads it
    as ``HWOI`` inside the tight bound's loop, a layout its convolution runs
    about 2.6 times slower (the Flax MNIST CNN's second conv, 64 -> 32
    features, 512 rows: 82 ms in XLA's profile of the loop, 31 ms read in the
    canonical order; the tight bound on that CNN went from 104.5 to 83.2 s per
    1,000 pairs). Here the forward conv
    (never run) reads a copy stored ``[*window, O, I]``, so its transpose
    reads that copy in the canonical order; the optimization barrier keeps
    XLA from folding the copy back into the convolution. Same numbers.
    """
    nd = lhs.ndim - 2
    swapped = jax.lax.optimization_barrier(jnp.swapaxes(rhs, -1, -2))
    dn = jax.lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1) + tuple(range(1, nd + 1)),
        rhs_spec=(nd, nd + 1) + tuple(range(nd)),
        out_spec=(0, nd + 1) + tuple(range(1, nd + 1)),
    )
    return jax.lax.conv_general_dilated_p.bind(lhs, swapped, **{**params, "dimension_numbers": dn})


def _conv_channels_last(params: dict, lhs, rhs, transposing: bool = False):
    """A convolution evaluated in the channels-last layout (``NHWC``, ``HWIO``), whatever its own.

    The same numbers in the equation's own layout: the operands are
    transposed in and the result back. XLA's CPU convolutions are several
    times faster channels-last, and under the bounds' ``vmap`` over input
    directions a channels-first net (Equinox, ``NCHW``) otherwise runs
    every convolution in its slow layout. A no-op for a channels-last conv.
    """
    dn = params["dimension_numbers"]
    nd = len(dn.lhs_spec) - 2
    last = tuple(range(nd + 2))
    lhs_perm = (dn.lhs_spec[0],) + tuple(dn.lhs_spec[2:]) + (dn.lhs_spec[1],)
    rhs_perm = tuple(dn.rhs_spec[2:]) + (dn.rhs_spec[1], dn.rhs_spec[0])
    own = lhs_perm == last and rhs_perm == last and dn.out_spec == dn.lhs_spec
    if not own:
        lhs, rhs = jnp.transpose(lhs, lhs_perm), jnp.transpose(rhs, rhs_perm)
    form = _conv_form(params, lhs.shape, rhs.shape, transposing)
    if form == "taps":
        out = _conv_by_taps(lhs, rhs, params)
    elif form == "rows":
        out = _conv_by_rows(lhs, rhs, params)
    elif transposing:
        out = _conv_for_transpose(lhs, rhs, params)
    elif own:
        out = jax.lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    else:
        channels_last = jax.lax.ConvDimensionNumbers(
            lhs_spec=(0, nd + 1) + tuple(range(1, nd + 1)),
            rhs_spec=(nd + 1, nd) + tuple(range(nd)),
            out_spec=(0, nd + 1) + tuple(range(1, nd + 1)),
        )
        out = jax.lax.conv_general_dilated_p.bind(lhs, rhs, **{**params, "dimension_numbers": channels_last})
    if own:
        return out
    # out is (N, spatial..., C): put each axis back where the equation's layout has it
    where = {dn.out_spec[0]: 0, dn.out_spec[1]: nd + 1}
    where.update({dn.out_spec[2 + i]: 1 + i for i in range(nd)})
    return jnp.transpose(out, tuple(where[j] for j in range(nd + 2)))


def _read(ref, env):
    return ref.value if isinstance(ref, _Lit) else env[ref]


def _map_axis(axis: int, in_shape: tuple, out_shape: tuple):
    """The axis of ``out_shape`` that a non-unit ``axis`` of ``in_shape`` becomes (unit axes added or dropped)."""
    if in_shape[axis] == 1:
        return None
    rank = sum(1 for n in in_shape[:axis] if n != 1)
    big = [a for a, n in enumerate(out_shape) if n != 1]
    return big[rank]


class Network:
    """A traced piecewise-linear ReLU network (a pytree; see :func:`trace_network`).

    Attributes:
      params: the params pytree ``apply_fn`` was traced with (the leaves).
      input_shape: the shape of one input ``x``.
      layer_shapes: the shape of each ReLU layer's pre-activation, in order.
      output_shape: the shape of ``apply_fn(params, x)``.
    """

    def __init__(self, params, consts, graph: _Graph):
        self.params = params
        self.consts = tuple(consts)
        self._graph = graph

    @property
    def input_shape(self) -> tuple:
        return self._graph.x_shape

    @property
    def layer_shapes(self) -> tuple:
        return self._graph.layer_shapes

    @property
    def output_shape(self) -> tuple:
        return self._graph.out_shape

    @property
    def dtype(self):
        """The dtype ``x`` was traced with (float); points are cast to it."""
        return jnp.dtype(self._graph.x_dtype)

    @property
    def num_layers(self) -> int:
        return len(self._graph.relu_z)

    @property
    def num_hidden(self) -> int:
        return sum(math.prod(s) for s in self.layer_shapes)

    def apply(self, x: jax.Array) -> jax.Array:
        """The traced function at one input ``x`` (the network's output)."""
        env = _constant_env(self)
        env[self._graph.x_id] = x
        for k, eqn in enumerate(self._graph.eqns):
            outs = _eval_eqn(eqn, [_read(r, env) for r in eqn.ins])
            env.update(zip(eqn.outs, outs))
        return env[self._graph.out_id]

    def __repr__(self) -> str:
        return (f"Network(input_shape={self.input_shape}, layer_shapes={self.layer_shapes}, "
                f"output_shape={self.output_shape})")


def _flatten_network(net: Network):
    return (net.params, net.consts), net._graph


def _unflatten_network(graph, children):
    params, consts = children
    return Network(params, consts, graph)


jax.tree_util.register_pytree_node(Network, _flatten_network, _unflatten_network)


def trace_network(apply_fn: Callable, params, example_x) -> Network:
    """Traces ``apply_fn(params, x)`` into a :class:`Network` every bound accepts.

    Args:
      apply_fn: maps the params and ONE input ``x`` (shape of ``example_x``,
        any rank: ``[d]``, ``[H, W, C]``) to the output (logits).
      params: a pytree of arrays (concrete or traced: this works inside a
        caller's ``jit``/``grad``).
      example_x: an array (or ``jax.ShapeDtypeStruct``) with the shape of
        one input; only its shape and dtype are used.

    Returns:
      A :class:`Network` (a pytree whose leaves are the params): pass it
      wherever a bound takes ``layers``; points are then
      ``[N, *example_x.shape]`` and the ball is the L2 ball in the flattened
      input.

    Raises:
      ValueError: naming the primitive and the line of ``apply_fn`` where
        the network stops being piecewise linear with ReLU activations (max
        pooling, tanh/sigmoid/GELU, softmax before the output, a product of
        two input-dependent values, train-mode batch statistics, control
        flow on the input), or when there is no ReLU at all.
    """
    shape = tuple(getattr(example_x, "shape", ()))
    dtype = getattr(example_x, "dtype", jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    x_aval = jax.ShapeDtypeStruct(shape, dtype)
    leaves, treedef = jax.tree.flatten(params)

    def flat_fn(leaves, x):
        return apply_fn(jax.tree.unflatten(treedef, leaves), x)

    try:
        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(leaves, x_aval)
    except jax.errors.ConcretizationTypeError as e:  # a Python `if`, `int()`, `bool()` on a traced value
        raise ValueError(
            f"trace_network: {_user_line(e)}: Python control flow (or bool/int/float) on a value that depends on the "
            f"input or the params ({type(e).__name__}); the network must be one fixed piecewise-linear function of "
            "x: compute both branches and select with jnp.where, or make the branch a static argument."
        ) from None
    if not isinstance(out_shape, jax.ShapeDtypeStruct):
        raise ValueError(
            f"trace_network: apply_fn must return one array (the logits), got {jax.tree.structure(out_shape)}."
        )
    key = f"{treedef}|{shape}|{jnp.dtype(dtype)}|{closed}"
    graph = _Graph(closed, len(leaves), x_aval, out_shape.shape, key)
    consts, graph.const_values = graph.const_values, None  # they belong to this trace, not the structure
    return Network(params, consts, graph)


# ---------------------------------------------------------------------------
# Evaluating the traced maps


def _user_line(error: BaseException) -> str:
    """``file:line (function)`` of the innermost frame of ``error`` outside JAX, Flax, Equinox and lr_jax."""
    lib = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)
    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frames = [
        f for f in traceback.extract_tb(error.__traceback__)
        if not any(s in f.filename for s in lib) and not os.path.abspath(f.filename).startswith(own)
    ]
    if not frames:
        return "apply_fn"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} ({f.name})"


def _constant_env(net: Network) -> dict:
    """Values of every equation that does not depend on ``x`` (params, constants and what they make)."""
    g = net._graph
    env = dict(zip(g.param_ids, jax.tree.leaves(net.params)))
    env.update(zip(g.const_ids, net.consts))
    for eqn in g.eqns:
        if eqn.outs and eqn.outs[0] in g.dep:
            continue
        env.update(zip(eqn.outs, _eval_eqn(eqn, [_read(r, env) for r in eqn.ins])))
    return env


def _zeros(shape, like):
    return jnp.zeros(shape, like.dtype)


def _linear_eqn(eqn: _Eqn, ins: list, dep: list, mode: str, g: _Graph, transposing: bool = False):
    """The linear part of one affine equation (``mode="linear"``), of its ``|.|`` (``"abs"``), or its structure (``"ones"``).

    ``"ones"`` replaces every constant factor by 1: its result is non-zero
    exactly where some path from a non-zero input reaches (no cancellation).

    ``ins[i]`` is a tangent (or None for zero) where ``dep[i]``, else the constant operand.
    ``transposing``: traced only to be transposed (a conv in the form whose transpose is fast, :func:`_conv_form`).
    """
    name = eqn.prim.name
    tangents = [v for v, d in zip(ins, dep) if d]
    if all(v is None for v in tangents):
        return [None] * len(eqn.outs)
    like = next(v for v in tangents if v is not None)
    if name in _SUMS:
        a, b = ins
        da, db = dep
        negate_b = name == "sub" and mode == "linear"
        if da and db and a is not None and b is not None:
            return [a - b if negate_b else a + b]
        if da and a is not None:
            return [a]
        return [-b if negate_b else b]
    if name == "neg":
        return [ins[0] if mode in ("abs", "ones") else -ins[0]]
    if name in _BILINEAR or name == "div":
        if mode == "ones":  # the structure only: every constant factor 1 (concrete, whatever the params)
            args = [v if d else jnp.ones(np.shape(v), like.dtype) for v, d in zip(ins, dep)]
        else:
            args = [v if d else (jnp.abs(v) if mode == "abs" else v) for v, d in zip(ins, dep)]
        return _eval_eqn(eqn, args, transposing)
    args = []
    for i, (v, d) in enumerate(zip(ins, dep)):
        if d and v is None:
            v = _zeros(g.shapes[eqn.ins[i]], like)
        elif not d and (name in ("concatenate",) or (name == "pad" and i == 1) or (name == "select_n" and i > 0)):
            v = jnp.zeros_like(v)  # a constant operand contributes no linear part
        args.append(v)
    return _eval_eqn(eqn, args)


class GraphNode:
    """One ReLU layer (or the output) of a traced network as the bounds use it.

    Built inside traced code from the constant environment; see
    :class:`lr_jax.bounds.core.DenseNode` for the interface.
    """

    def __init__(self, graph: _Graph, cone: _Cone, env: dict):
        self._g, self._cone, self._env = graph, cone, env
        self.sources = cone.sources
        self.shape = graph.shapes[cone.target]
        self._vars = dict(zip(cone.sources, cone.source_vars))
        # |M_s| of the sources the abs interpreter cannot do exactly, once per call.
        self._dense_abs = {
            s: jnp.abs(self.materialise(s))
            for s, exact in zip(cone.sources, cone.abs_exact)
            if s != 0 and not exact
        }

    def _run(self, srcs: dict, mode: str, transposing: bool = False):
        g, env = self._g, self._env
        local = {self._vars[s]: v for s, v in srcs.items()}
        for k in self._cone.eqns:
            eqn = g.eqns[k]
            if mode == "value":
                vals = [_read(r, local) if (not isinstance(r, _Lit) and r in local) else _read(r, env)
                        for r in eqn.ins]
                outs = _eval_eqn(eqn, vals)
            else:
                dep = [not isinstance(r, _Lit) and r in g.dep for r in eqn.ins]
                vals = [local.get(r) if d else _read(r, env) for r, d in zip(eqn.ins, dep)]
                outs = _linear_eqn(eqn, vals, dep, mode, g, transposing)
            local.update(zip(eqn.outs, outs))
        out = local.get(self._cone.target)
        if out is None:
            like = next(iter(srcs.values()))
            out = jnp.zeros(self.shape, like.dtype)
        return out

    def apply(self, vals: dict) -> jax.Array:
        """``z = sum_s M_s^T h_s + c`` at the sources' values ``{node: [*S_s]}``."""
        return self._run({s: vals[s] for s in self.sources}, "value")

    def linear(self, tans: dict) -> jax.Array:
        """``sum_s M_s^T t_s`` for one tangent per source (missing sources: 0)."""
        return self._run({s: t for s, t in tans.items() if s in self._vars}, "linear")

    def linear_d(self, tans: dict) -> jax.Array:
        """``sum_s M_s^T L_s`` for ``L_s`` ``[d, *S_s]``: the map applied to each of the ``d`` directions.

        The directions lead, so that a conv sees them as its batch (no transposes).
        """
        return jax.vmap(self.linear)(tans)

    def abs_linear(self, us: dict) -> jax.Array:
        """``sum_s |M_s|^T u_s`` (exact; see the module docstring), ``u_s`` ``[*S_s]``."""
        exact = {s: u for s, u in us.items() if s in self._vars and s not in self._dense_abs}
        out = self._run(exact, "abs") if exact else None
        for s, m in self._dense_abs.items():
            if s in us:
                part = jnp.tensordot(us[s].reshape(-1), m, axes=1, precision=_HIGHEST)
                out = part if out is None else out + part
        if out is None:
            out = jnp.zeros(self.shape, next(iter(us.values())).dtype) if us else None
        return out

    def backward(self, rows: jax.Array) -> dict:
        """``rows M_s`` for every source: ``[m, *S] -> {s: [m, *S_s]}`` (the transpose of ``linear``)."""
        dtype = rows.dtype
        primals = tuple(jax.ShapeDtypeStruct(self._g.shapes[v], dtype) for v in self._cone.source_vars)

        def lin(*tans):  # only traced, to be transposed: convs in the form whose transpose is a matmul
            return self._run(dict(zip(self.sources, tans)), "linear", transposing=True)

        transpose = jax.linear_transpose(lin, *primals)
        outs = jax.vmap(transpose)(rows)
        return dict(zip(self.sources, outs))

    @property
    def local(self) -> bool:
        """Whether the map is a translation-equivariant stencil (see ``_Graph.local``)."""
        return self._g.local(self._cone)

    def support_backward(self, rows) -> dict:
        """Where ``rows M_s`` can be non-zero: the transpose of the ``"ones"`` structure, concrete NumPy.

        Depends on the shapes and the graph only (never on the params), so it
        can run while the params are traced: ``[m, *S] -> {s: [m, *S_s]}``,
        non-negative, zero exactly where no path reaches.
        """
        with jax.ensure_compile_time_eval():
            rows = jnp.asarray(rows, jnp.float32)
            primals = tuple(jax.ShapeDtypeStruct(self._g.shapes[v], jnp.float32) for v in self._cone.source_vars)

            def lin(*tans):
                return self._run(dict(zip(self.sources, tans)), "ones")

            outs = jax.vmap(jax.linear_transpose(lin, *primals))(rows)
            return {s: np.asarray(o) for s, o in zip(self.sources, outs)}

    def transposed(self) -> dict:
        """``M_s^T`` for every source, ``{s: [n, *S_s]}`` (``backward`` of the identity)."""
        n = math.prod(self.shape)
        return self.backward(jnp.eye(n, dtype=self._g.x_dtype).reshape((n,) + self.shape))

    def offset(self) -> jax.Array:
        """``c``: the map at zero sources."""
        dtype = self._g.x_dtype
        return self.apply({s: jnp.zeros(self._g.shapes[v], dtype) for s, v in self._vars.items()})

    def materialise(self, source: int) -> jax.Array:
        """``M_s`` as a dense array ``[n_s, *S]`` (row ``i``: the map of the ``i``-th basis vector)."""
        shape = self._g.shapes[self._vars[source]]
        n = math.prod(shape)
        dtype = self._g.x_dtype
        basis = jnp.eye(n, dtype=dtype).reshape((n,) + shape)
        return jax.vmap(lambda e: self.linear({source: e}))(basis)


_DENSE_ONLY = {"conv_general_dilated", "reduce_window_sum", "cumsum"}


def graph_nodes(net: Network):
    """The ReLU layers of ``net`` as nodes, and its hidden ``(W, b)`` pairs when it is a Dense chain.

    A network whose every ReLU layer is 1-D, reads only the previous layer
    (the first: the input, flattened), and contains no convolution or pooling
    is a chain of Dense layers: its maps are materialised (exactly the
    paper's ``M^k``; a linear bottleneck becomes its composite) and the
    bounds run the scanned ``layers`` kernel on them.

    Returns:
      ``(nodes, dense)``: ``nodes`` a list of :class:`GraphNode`; ``dense`` a
      tuple of ``(W [n_{t-1}, n_t], b [n_t])`` or None.
    """
    g = net._graph
    env = _constant_env(net)
    chain = all(len(s) == 1 for s in g.layer_shapes) and all(
        cone.sources == (t,) for t, cone in enumerate(g.cones)
    ) and not any(g.eqns[k].prim.name in _DENSE_ONLY for cone in g.cones for k in cone.eqns)
    if chain:
        dense = []
        for t, cone in enumerate(g.cones):
            node = _ChainMap(g, cone, env)
            W = node.materialise(t).reshape(-1, g.layer_shapes[t][0])
            dense.append((W, node.offset()))
        return None, tuple(dense)
    return [GraphNode(g, cone, env) for cone in g.cones], None


class _ChainMap(GraphNode):
    """A Dense-chain layer: only materialised, so no |M| is prepared."""

    def __init__(self, graph, cone, env):
        self._g, self._cone, self._env = graph, cone, env
        self.sources = cone.sources
        self.shape = graph.shapes[cone.target]
        self._vars = dict(zip(cone.sources, cone.source_vars))
        self._dense_abs = {}
