"""The workload a hardware cost model reads: a model's matrix products and convolutions as GEMMs.

A :class:`Workload` is a pytree of ``(L,)`` float32 arrays, one entry per layer, so cost
functions are plain ``jnp`` functions of it: jittable, ``vmap``-able over design points
and differentiable with respect to the continuous fields (per-layer bit-widths and
densities).  Every layer is ``groups`` independent GEMMs ``(M x K) @ (K x N)`` repeated
``count`` times:

* dense / matmul: ``M`` = rows of the activation (batch x tokens), ``K`` = reduction
  length, ``N`` = output features;
* convolution (im2col view, SCALE-Sim's): ``M`` = batch x output pixels, ``K`` =
  ``kh * kw * cin / groups``, ``N`` = ``cout / groups``, ``groups`` = the feature
  group count (a depthwise convolution is ``C`` GEMMs with ``K = kh * kw``, ``N = 1``).

MACs of a layer = ``count * groups * M * K * N``.  The static side (names, kinds and the
convolution geometry used for SCALE-Sim topology files) is kept in :class:`LayerInfo`
tuples beside the arrays, not inside the pytree.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LayerInfo(NamedTuple):
    """Static description of one layer (not traced).

    Attributes:
      name: a readable name (``"conv3"``, ``"dense1"``, or the primitive and index).
      kind: ``"conv"``, ``"dense"`` or ``"matmul"`` (activation x activation, e.g. attention).
      ifmap_hw: ``(H, W)`` input spatial size for convolutions (padded as SCALE-Sim expects
        it, see :mod:`jaxrob.hw._workload`), else ``None``.
      filter_hw: ``(kh, kw)`` for convolutions, else ``None``.
      channels: input channels per group for convolutions, else ``None``.
      stride: the convolution stride (square strides), else ``None``.
    """

    name: str
    kind: str
    ifmap_hw: tuple[int, int] | None = None
    filter_hw: tuple[int, int] | None = None
    channels: int | None = None
    stride: int | None = None


class Workload(NamedTuple):
    """Per-layer GEMM dimensions and the differentiable per-layer knobs, all ``(L,)`` float32.

    Attributes:
      m, k, n: GEMM dimensions (see the module docstring).
      groups: independent GEMMs of that shape per layer (feature groups, attention heads).
      count: how many times the layer runs per forward pass (e.g. inside a ``scan``).
      weight_bits, act_bits: operand precisions (default 8).
      weight_density, act_density: fraction of non-zero weights / input activations (default 1).
    """

    m: jax.Array
    k: jax.Array
    n: jax.Array
    groups: jax.Array
    count: jax.Array
    weight_bits: jax.Array
    act_bits: jax.Array
    weight_density: jax.Array
    act_density: jax.Array

    @property
    def macs(self) -> jax.Array:
        """``(L,)`` multiply-accumulates per layer (dense count, before any sparsity)."""
        return self.count * self.groups * self.m * self.k * self.n


def make_workload(m, k, n, *, groups=1, count=1, weight_bits=8, act_bits=8, weight_density=1.0,
                  act_density=1.0) -> Workload:
    """A :class:`Workload` from per-layer sequences (scalars broadcast to every layer)."""
    m = jnp.atleast_1d(jnp.asarray(m, jnp.float32))
    shape = m.shape

    def col(x):
        return jnp.broadcast_to(jnp.asarray(x, jnp.float32), shape)

    return Workload(m, col(k), col(n), col(groups), col(count), col(weight_bits), col(act_bits),
                    col(weight_density), col(act_density))
