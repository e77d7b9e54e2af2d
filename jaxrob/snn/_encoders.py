"""Input encoders: a batch of images -> one input current per timestep of a spiking network.

Every encoder is a frozen (hashable) dataclass with the pure ``(init, step)`` pair
of the house style, so a model runs it inside its own ``lax.scan`` over time::

    state = enc.init(x, key=key)              # once, x: (N, H, W, C) floating
    state, i_t = enc.step(state, t)           # t = 0 .. T-1, i_t: enc.output_shape(x.shape)

:meth:`Encoder.encode` does exactly that and stacks the ``T`` currents.  Every
encoder is jittable, vmappable (each image is encoded independently of the rest
of the batch) and differentiable with respect to ``x`` through a documented
gradient, so gradient attacks (PGD) run through it.

==============  ==============  ===========================================  ==========================
encoder         input           current at step t                            d current / d x
==============  ==============  ===========================================  ==========================
Direct          normalised      x (analog, every step)                       exact (identity)
PoissonRate     raw [0, 1]      Bernoulli(max_rate * x) in {0, 1}            max_rate (straight-through)
 signed=True    normalised      sign(x) Bernoulli(max_rate min(|x|, 1))      max_rate (straight-through)
Latency         raw [0, 1]      1 at t = round((1 - x)(T - 1)), else 0       central difference in time
DCT             normalised      +-1 spikes of a block-DCT accumulator        surrogate on the crossing
==============  ==============  ===========================================  ==========================

"normalised" is the model-normalised image ``(x - mean) / std``; "raw" the
intensities in [0, 1].  :attr:`Encoder.normalized` says which one an encoder
consumes (a property because :class:`PoissonRate` switches with ``signed``).

References:
  Rueckauer, Lungu, Hu, Pfeiffer, Liu, "Conversion of continuous-valued deep networks
  to efficient event-driven networks for image classification", Frontiers in
  Neuroscience 2017 (the analog input layer, :class:`Direct`).
  Sengupta, Ye, Wang, Liu, Roy, "Going deeper in spiking neural networks: VGG and
  residual architectures", Frontiers in Neuroscience 2019, arXiv:1802.02627, and
  Rathi & Roy, "Enabling deep spiking neural networks with hybrid conversion and spike
  timing dependent backpropagation", ICLR 2020, arXiv:2005.01807 (Poisson rate
  coding; the signed variant on the normalised image is their code's PoissonGenerator).
  Eshraghian et al., "Training spiking neural networks using lessons from deep
  learning", Proc. IEEE 2023, arXiv:2109.12894 (snnTorch's rate and latency coding).
  Garg, Chowdhury, Roy, "DCT-SNN: Using DCT to distribute spatial information over time
  for low-latency spiking neural networks", ICCV 2021, arXiv:2010.01795 (:class:`DCT`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrob import _validate
from jaxrob.quant._ste import straight_through
from jaxrob.snn._surrogate import Surrogate, Triangle

# ---------------------------------------------------------------------------------------------
# shared checks


def _images(x: Any, *, raw: bool) -> jax.Array:
    """Checks a batch of images ``(N, H, W, C)`` with a floating dtype (and [0, 1] values if ``raw``)."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating images (N, H, W, C), got dtype {x.dtype}; "
                        f"convert uint8 images with x.astype(jnp.float32) / 255")
    if np.ndim(x) != 4:
        raise ValueError(f"x must be a batch of images of shape (N, H, W, C), got shape {np.shape(x)}")
    if raw:
        _validate.unit_interval("x", x)
    return jnp.asarray(x)


def _optional_key(key: Any) -> jax.Array | None:
    return None if key is None else _validate.prng_key("key", key)


def _timestep(t: Any) -> jax.Array:
    t = jnp.asarray(t)
    if t.ndim != 0 or not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"t must be an integer scalar timestep, got dtype {t.dtype} and shape {t.shape}")
    return t


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")


# ---------------------------------------------------------------------------------------------
# the contract


class Encoder:
    """Base class of the encoders: the contract a spiking model relies on.

    Subclasses are frozen dataclasses; their fields are static hyperparameters.

    * ``normalized`` (property): True if the encoder consumes the model-normalised
      image ``(x - mean) / std``, False if raw intensities in [0, 1].
    * ``spiking`` (property): True if the current is spikes (values in {-1, 0, 1}), so
      the first layer accumulates (AC) instead of multiplying (MAC); False for
      :class:`Direct`'s analog current.
    * ``init(x, *, key) -> state``: ``x`` is ``(N, H, W, C)`` floating; ``key`` a typed
      PRNG key (``jax.random.key``), unused (and optional) for deterministic encoders;
      ``state`` is a pytree of arrays.  Images are encoded independently of each other.
    * ``step(state, t) -> (state, current)``: ``t`` an int32 scalar (traced inside
      ``lax.scan``); ``current`` has shape :meth:`output_shape` ``(x.shape)`` and ``x``'s dtype.
    * ``period() -> int | None``: timesteps of one full code cycle, None if not cyclic.
    """

    @property
    def normalized(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def spiking(self) -> bool:
        """True if the current is spikes in {-1, 0, 1} (every encoder but :class:`Direct`)."""
        return True

    def init(self, x: jax.Array, *, key: jax.Array | None = None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, state: Any, t: jax.Array) -> tuple[Any, jax.Array]:  # pragma: no cover - abstract
        raise NotImplementedError

    def period(self) -> int | None:
        """Timesteps of one full code cycle; None if the code is not cyclic."""
        return None

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the current produced for images of shape ``shape`` (the same except for
        :class:`DCT` with overlapping blocks in its ``"tile"`` layout)."""
        return tuple(shape)

    def encode(self, x: jax.Array, timesteps: int, *, key: jax.Array | None = None) -> jax.Array:
        """Runs ``init`` then ``step`` for ``t = 0 .. timesteps - 1`` with ``lax.scan``.

        Args:
          x: ``(N, H, W, C)`` images (normalised or raw, see :attr:`normalized`).
          timesteps: Python int >= 1.
          key: typed PRNG key (required by stochastic encoders).

        Returns:
          ``(timesteps, *output_shape(x.shape))`` currents in ``x``'s dtype.
        """
        timesteps = _validate.number("timesteps", timesteps, min=1, integer=True)
        state = self.init(x, key=key)
        _, currents = jax.lax.scan(self.step, state, jnp.arange(timesteps, dtype=jnp.int32))
        return currents


# ---------------------------------------------------------------------------------------------
# Direct


@dataclasses.dataclass(frozen=True)
class Direct(Encoder):
    """Direct (analog) input: the normalised image is the input current at every step.

    The first layer then acts as the encoder (Rueckauer et al. 2017).  The gradient
    with respect to ``x`` is exact (the current is ``x``).

    Example:
      >>> import jax.numpy as jnp
      >>> Direct().encode(jnp.full((1, 2, 2, 1), 0.5), 3)[:, 0, 0, 0, 0].tolist()
      [0.5, 0.5, 0.5]
    """

    @property
    def normalized(self) -> bool:
        return True

    @property
    def spiking(self) -> bool:
        return False

    def init(self, x, *, key=None):
        """State: the images themselves, ``(N, H, W, C)``."""
        _optional_key(key)
        return _images(x, raw=False)

    def step(self, state, t):
        _timestep(t)
        return state, state


# ---------------------------------------------------------------------------------------------
# Poisson rate coding


class PoissonState(NamedTuple):
    """State of :class:`PoissonRate`: the key (folded with ``t`` each step) and the images."""

    key: jax.Array
    x: jax.Array


@dataclasses.dataclass(frozen=True)
class PoissonRate(Encoder):
    """Rate coding: an independent Bernoulli spike per pixel and step.

    ``signed=False`` (default): raw intensities ``x`` in [0, 1]; a spike (1) with
    probability ``max_rate * x``.  ``signed=True``: the variant of the Roy lab's code
    (Sengupta et al. 2019; Rathi & Roy 2020) on the *normalised* image: the spike is
    ``sign(x)`` with probability ``max_rate * min(|x|, 1)``.

    The uniform numbers of step ``t`` are drawn with ``jax.random.fold_in(key, t)``:
    same key and step, same spikes; different steps are independent.

    One key serves the whole batch (the numbers of a step are drawn as one flat array), so
    an image's spike train depends on its position in the batch and on the batch's shape:
    images are encoded *independently* of each other, but the same image in another slot
    (or another batch size) gets other, equally distributed, spikes.  For a spike train
    that belongs to the image wherever it is, encode each image with its own key, e.g.
    ``jax.vmap(lambda xi, i: enc.encode(xi[None], T, key=jax.random.fold_in(key, i))[:, 0],
    out_axes=1)(x, ids)`` with ``ids`` a stable example id (slower to draw on XLA:CPU).

    Gradient: straight-through of the expected value.  ``E[spike] = max_rate * x``
    (signed: ``max_rate * clip(x, -1, 1)``), so ``d spike / d x = max_rate``, applied
    everywhere (also where the probability is clipped, so that PGD can move back).

    Attributes:
      max_rate: spike probability of a pixel at intensity 1, in (0, 1].
      signed: the signed variant on the normalised image (then ``normalized`` is True).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> s = PoissonRate().encode(jnp.full((1, 8, 8, 1), 0.25), 400, key=jax.random.key(0))
      >>> bool(abs(float(s.mean()) - 0.25) < 0.01)
      True
    """

    max_rate: float = 1.0
    signed: bool = False

    def __post_init__(self):
        _validate.number("PoissonRate.max_rate", self.max_rate, min=0.0, max=1.0, min_inclusive=False)
        _flag("PoissonRate.signed", self.signed)

    @property
    def normalized(self) -> bool:
        return bool(self.signed)

    def init(self, x, *, key=None):
        if key is None:
            raise TypeError("PoissonRate.init needs a PRNG key: init(x, key=jax.random.key(seed))")
        key = _validate.prng_key("key", key)
        return PoissonState(key, _images(x, raw=not self.signed))

    def step(self, state, t):
        t = _timestep(t)
        x = state.x
        # drawn flat and reshaped: XLA:CPU compiles a rank-1 threefry draw several times faster
        u = jax.random.uniform(jax.random.fold_in(state.key, t), (x.size,), dtype=x.dtype).reshape(x.shape)
        if self.signed:
            p = self.max_rate * jnp.minimum(jnp.abs(x), 1.0)
            s = jnp.sign(x) * (u < p).astype(x.dtype)
        else:
            p = self.max_rate * jnp.clip(x, 0.0, 1.0)
            s = (u < p).astype(x.dtype)
        return state, straight_through(self.max_rate * x, s)


# ---------------------------------------------------------------------------------------------
# Latency (time-to-first-spike) coding


class LatencyState(NamedTuple):
    """State of :class:`Latency`: the images, each pixel's spike step, and which pixels fire."""

    x: jax.Array
    index: jax.Array
    fires: jax.Array


@dataclasses.dataclass(frozen=True)
class Latency(Encoder):
    """Time-to-first-spike coding with a linear time code: one spike per pixel, brighter = earlier.

    A pixel with raw intensity ``x >= threshold`` fires once, at step
    ``n = round((1 - x) * (timesteps - 1))`` (``jnp.round``: half to even), so ``x = 1``
    fires at step 0 and ``x = threshold`` near the end; darker pixels never fire.  Steps
    ``t >= timesteps`` carry no spike (the code is not cyclic: :meth:`period` is None).

    Gradient (our choice, a straight-through estimator of the spike *time*): the spike
    train is a unit mass at the continuous time ``tau = (1 - x)(timesteps - 1)``, and
    the derivative of a shifted unit impulse is taken as the central difference, i.e.
    ``d s_t / d tau = (1[t = n + 1] - 1[t = n - 1]) / 2``, hence
    ``d s_t / d x = (timesteps - 1) / 2 * (1[t = n - 1] - 1[t = n + 1])``.  A loss that
    prefers an earlier spike gets a positive gradient (brighten the pixel).  The
    threshold gate carries no gradient; pixels that do not fire get none.

    Attributes:
      timesteps: length ``T`` >= 1 of the code window.
      threshold: intensities below it never fire, in [0, 1] (snnTorch's default 0.01).

    Example:
      >>> import jax.numpy as jnp
      >>> s = Latency(timesteps=5).encode(jnp.array([1.0, 0.5, 0.0]).reshape(1, 1, 3, 1), 5)
      >>> s[:, 0, 0, :, 0].T.tolist()
      [[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    """

    timesteps: int
    threshold: float = 0.01

    def __post_init__(self):
        _validate.number("Latency.timesteps", self.timesteps, min=1, integer=True)
        _validate.number("Latency.threshold", self.threshold, min=0.0, max=1.0)

    @property
    def normalized(self) -> bool:
        return False

    def spike_step(self, x: jax.Array) -> jax.Array:
        """Step at which each pixel of raw intensity ``x`` fires (int32), ignoring the threshold."""
        return jnp.round((1.0 - jnp.clip(x, 0.0, 1.0)) * (self.timesteps - 1)).astype(jnp.int32)

    def init(self, x, *, key=None):
        _optional_key(key)
        x = _images(x, raw=True)
        xs = jax.lax.stop_gradient(x)
        return LatencyState(x, self.spike_step(xs), xs >= self.threshold)

    def step(self, state, t):
        t = _timestep(t)
        x, n, fires = state
        s = (fires & (t == n)).astype(x.dtype)
        c = (fires & (t == n - 1)).astype(x.dtype) - (fires & (t == n + 1)).astype(x.dtype)
        c = jax.lax.stop_gradient(c * (0.5 * (self.timesteps - 1)))
        return state, straight_through(x * c, s)


# ---------------------------------------------------------------------------------------------
# DCT temporal coding (DCT-SNN)


def _count(name: str, value: Any, *, min: int) -> int:
    return _validate.number(name, value, min=min, integer=True)


def zigzag(n: int) -> list[tuple[int, int]]:
    """The JPEG zig-zag order of an ``n x n`` block: ``(row, col)`` frequency pairs, lowest first.

    Anti-diagonals ``row + col = d`` in increasing ``d``, walked towards the top right
    (row decreasing) for even ``d`` and towards the bottom left for odd ``d``; the
    order DCT-SNN's code lists for its 4x4 and 8x8 blocks.

    Example:
      >>> zigzag(3)
      [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (1, 2), (2, 1), (2, 2)]
    """
    n = _count("n", n, min=1)
    order = []
    for d in range(2 * n - 1):
        rows = range(max(0, d - n + 1), min(d, n - 1) + 1)
        for r in (reversed(rows) if d % 2 == 0 else rows):
            order.append((r, d - r))
    return order


@functools.lru_cache(maxsize=None)
def _basis_np(block: int) -> np.ndarray:
    k = np.arange(block)
    q = np.sqrt(2.0 / block) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * block))
    q[0] = np.sqrt(1.0 / block)                         # orthonormal DCT-II matrix, rows = frequencies
    return np.stack([np.outer(q[u], q[v]) for u, v in zigzag(block)])


def dct_basis(block: int, dtype: Any = jnp.float32) -> jax.Array:
    """Orthonormal 2-D DCT-II basis images of a ``block x block`` block, in zig-zag order.

    ``basis[k][i, j] = Q[u, i] Q[v, j]`` with ``(u, v) = zigzag(block)[k]`` (``u`` the
    vertical frequency) and ``Q`` the orthonormal DCT-II matrix; a block ``P`` has
    coefficients ``c_k = <P, basis[k]>`` and ``P = sum_k c_k basis[k]``.

    Returns:
      ``(block * block, block, block)`` array.
    """
    block = _count("block", block, min=1)
    return jnp.asarray(_basis_np(block), dtype)


# JPEG (ITU-R BT.601 full range) RGB -> YCbCr on [0, 1] images, as in DCT-SNN's code.
_YCBCR = np.array([[0.299, 0.587, 0.114],
                   [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]])
_YCBCR_OFFSET = np.array([0.0, 128.0 / 255.0, 128.0 / 255.0])

LAYOUTS = ("tile", "fold")


def _order_keys(rows: jax.Array) -> jax.Array:
    """Signed integers ordered as the floats ``rows`` (the IEEE bit pattern, negatives' magnitude bits flipped)."""
    itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[rows.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(rows, itype)
    return jnp.where(bits < 0, bits ^ jnp.iinfo(itype).max, bits)


def _kth_smallest(keys: jax.Array, k: jax.Array) -> jax.Array:
    """Order keys of the ``k``-th smallest (0-based) entry of each row of ``(N, M)``; ``k``: ``(N, Q)``.

    Bisection over the integer keys, one counting pass over the row per bit (no sort): the
    smallest key ``K`` with ``#{keys <= K} >= k + 1`` is exactly the ``k``-th order statistic.
    """
    lo = jnp.broadcast_to(keys.min(axis=1, keepdims=True), k.shape)     # count(<= lo) >= 1
    hi = jnp.broadcast_to(keys.max(axis=1, keepdims=True), k.shape)     # count(<= hi) = M > k

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)                    # floor((lo + hi) / 2), no overflow
        count = (keys[:, :, None] <= mid[:, None, :]).sum(axis=1, dtype=jnp.int32)
        enough = count >= k + 1
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    # the answer lies in [lo, hi]; each step halves the interval, so 8 * itemsize steps pin it down
    lo, _ = jax.lax.fori_loop(0, 8 * keys.dtype.itemsize, body, (lo, hi))
    return lo


def _percentiles(rows: jax.Array, qs: tuple[float, ...]) -> list[jax.Array]:
    """Percentiles ``qs`` (in [0, 100]) of each row of ``(N, M)``, numpy's default linear interpolation.

    The virtual index ``q / 100 * (M - 1)`` is static; the two order statistics around it are found
    by bisection over the floats' bit patterns (:func:`_kth_smallest`: one counting pass per bit,
    much cheaper on XLA:CPU than sorting every row) and are exact, so the result equals
    ``np.percentile(rows, q, axis=1)`` up to the rounding of the interpolation.
    """
    rows = jax.lax.stop_gradient(rows)
    n, m = rows.shape
    keys = _order_keys(rows)
    pos = [q / 100.0 * (m - 1) for q in qs]
    los = [min(int(np.floor(p)), m - 1) for p in pos]
    found = _kth_smallest(keys, jnp.broadcast_to(jnp.asarray(los, jnp.int32), (n, len(los))))   # (N, Q)
    at = keys[:, :, None] == found[:, None, :]
    above = keys[:, :, None] > found[:, None, :]
    # back from keys to the floats: the entry holding the key; and the next order statistic, which is the
    # same value when it is repeated, else the smallest entry above it
    value = jnp.max(jnp.where(at, rows[:, :, None], -jnp.inf), axis=1)
    repeated = (keys[:, :, None] <= found[:, None, :]).sum(axis=1) >= jnp.asarray(los) + 2
    nxt = jnp.where(repeated, value, jnp.min(jnp.where(above, rows[:, :, None], jnp.inf), axis=1))
    out = []
    for i, (p, lo) in enumerate(zip(pos, los)):
        a = value[:, i]
        out.append(a if lo + 1 > m - 1 else a + (p - lo) * (nxt[:, i] - a))
    return out


class DCTState(NamedTuple):
    """State of :class:`DCT`.

    Attributes:
      coef: ``(K, N, Bh, Bw, C)`` block DCT coefficients of the ``K`` frequencies used.
      mem: the accumulator, ``output_shape`` (after the soft reset of the last step).
      th_pos, th_neg: ``(N, 1, 1, 1)`` positive and negative thresholds (no gradient).
    """

    coef: jax.Array
    mem: jax.Array
    th_pos: jax.Array
    th_neg: jax.Array


@dataclasses.dataclass(frozen=True)
class DCT(Encoder):
    """DCT-SNN's temporal encoder: one block-DCT frequency per step into a +-1 spiking accumulator.

    The (normalised) image is cut into ``block x block`` blocks at ``stride``; each
    block's 2-D DCT coefficients ``c_k`` are taken in zig-zag order.  At step ``t`` the
    accumulator of every output pixel adds the image's component at frequency
    ``k = t mod K`` (``c_k * basis[k]``, the block's reconstruction restricted to that
    frequency) and emits ``+1`` when it exceeds ``th_pos``, ``-1`` when it falls below
    ``th_neg``, subtracting the crossed threshold (soft reset).  Over full cycles the
    accumulator therefore conserves the signal: ``th_pos * (#+1) + th_neg * (#-1) +
    mem_T = (T / K) * sum_k component_k``, and with all ``block**2`` frequencies
    ``sum_k component_k`` is the image (block DCT is invertible).

    What we verified in the authors' code (github.com/SayeedChowdhury/dct-snn, files
    ``spike_model_cifar.py``/``spike_model_tinyimagenet.py``/``main_*_submit.py``):

    * Input: the *normalised* image (``transforms.Normalize``; mean = std = 0.5 on
      CIFAR), and, for 3 channels, first converted to YCbCr with the JPEG matrix and
      chroma offsets ``128/255`` (``ycbcr=True`` here; other channel counts untouched).
    * Transform: orthonormal DCT-II, ``block=4``, 16 bases in JPEG zig-zag order, one
      per step, cycling with ``t mod 16``; 48 timesteps (3 cycles) on CIFAR and
      TinyImageNet.
    * Tiling: the CIFAR model uses overlapping blocks (``stride=2``) and does *not* fold
      them back: each block's components go to their own ``block x block`` tile of a
      larger image (32x32 -> 15x15 blocks -> 60x60 input to the first conv), which is
      ``layout="tile"`` here (trailing rows/columns that fill no block are dropped, as
      there).  The TinyImageNet model uses non-overlapping blocks (``stride=block``),
      where tiling keeps the image size.  ``layout="fold"`` is our addition for
      overlapping blocks on the input grid: the components are overlap-added and
      divided by the number of blocks covering each pixel, so they still sum to the
      image exactly (every pixel must be covered: ``(H - block) % stride == 0``).
    * Thresholds: ``th_neg`` / ``th_pos`` are the 6.5th / 93.5th percentiles (numpy's
      linear interpolation) of all the component values (all frequencies, positions,
      channels).  The code takes them over the whole batch; we take them per image,
      so an image's code does not depend on the rest of its batch (vmap-safe).  They
      are clamped to ``th_pos >= tiny > 0 > -tiny >= th_neg`` (a degenerate image could
      otherwise get a threshold of the wrong sign), computed from all ``block**2``
      frequencies even when ``frequencies < block**2`` (so dropping frequencies at
      inference keeps the thresholds a network was trained with), and carry no
      gradient (the code computes them in numpy).  ``thresholds=(neg, pos)`` fixes them.
    * Dropping the highest frequencies (the paper's latency/accuracy trade-off):
      ``frequencies=k`` keeps the first ``k`` in zig-zag order and cycles with
      ``t mod k`` (:meth:`period` is ``k``).

    Gradient (the code has none: its encoder is not differentiated): each spike is
    ``surrogate((v - th) / th)`` with ``v`` the accumulator before the reset (the
    normalised-potential convention of :mod:`jaxrob.snn._surrogate`), so
    ``d(+1 spike)/dv = g(.) / th_pos`` and ``d(-1 spike)/dv = -g(.) / |th_neg|``; the
    reset is detached like the LIF neurons' (``detach_reset``).  The default surrogate
    is the unit-area :class:`~jaxrob.snn._surrogate.Triangle` of half-width 1 (support
    ``0 < v < 2 th_pos`` and ``2 th_neg < v < 0``).  Gradients reach ``x`` through the
    (linear) DCT and colour transform.

    Attributes:
      block: block size (4 in DCT-SNN).
      stride: block stride in ``1..block`` (None: ``block``, non-overlapping; DCT-SNN's
        CIFAR models use 2).
      frequencies: number ``K`` of zig-zag frequencies used, ``1..block**2`` (None: all).
      layout: ``"tile"`` (the code's) or ``"fold"`` (overlap-add, normalised by coverage).
      ycbcr: convert 3-channel images to YCbCr first, as the code does.
      percentiles: ``(low, high)`` percentiles giving ``(th_neg, th_pos)``.
      thresholds: fixed ``(th_neg, th_pos)`` with ``th_neg < 0 < th_pos``, or None.
      surrogate: spike function of the crossings.
      detach_reset: stop the gradient through the soft reset.

    References:
      Garg, Chowdhury, Roy, "DCT-SNN: Using DCT to distribute spatial information over
      time for low-latency spiking neural networks", ICCV 2021, arXiv:2010.01795.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
      >>> enc = DCT(block=4)
      >>> s = enc.encode(x, 2 * enc.period())
      >>> s.shape, sorted(set(s.ravel().tolist())) == [-1.0, 0.0, 1.0]
      ((32, 2, 8, 8, 1), True)
    """

    block: int = 4
    stride: int | None = None
    frequencies: int | None = None
    layout: str = "tile"
    ycbcr: bool = True
    percentiles: tuple[float, float] = (6.5, 93.5)
    thresholds: tuple[float, float] | None = None
    surrogate: Surrogate = Triangle(1.0)
    detach_reset: bool = True

    def __post_init__(self):
        b = _count("DCT.block", self.block, min=1)
        if self.stride is not None:
            s = _count("DCT.stride", self.stride, min=1)
            if s > b:
                raise ValueError(f"DCT.stride must be in 1..block={b} (blocks must cover the image), got {s}")
        if self.frequencies is not None:
            k = _count("DCT.frequencies", self.frequencies, min=1)
            if k > b * b:
                raise ValueError(f"DCT.frequencies must be in 1..block**2={b * b}, got {k}")
        _validate.choice("DCT.layout", self.layout, LAYOUTS)
        _flag("DCT.ycbcr", self.ycbcr)
        _flag("DCT.detach_reset", self.detach_reset)
        for name in ("percentiles", "thresholds"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, value := tuple(value))
            if value is None and name == "thresholds":
                continue
            if not isinstance(value, tuple) or len(value) != 2:
                raise TypeError(f"DCT.{name} must be a pair (low, high) of numbers, got {value!r}")
        lo = _validate.number("DCT.percentiles[0]", self.percentiles[0], min=0.0, max=100.0)
        hi = _validate.number("DCT.percentiles[1]", self.percentiles[1], min=0.0, max=100.0)
        if not lo < hi:
            raise ValueError(f"DCT.percentiles must be (low, high) with low < high, got {self.percentiles}")
        if self.thresholds is not None:
            _validate.number("DCT.thresholds[0]", self.thresholds[0], max=0.0, max_inclusive=False)
            _validate.number("DCT.thresholds[1]", self.thresholds[1], min=0.0, min_inclusive=False)
        if not isinstance(self.surrogate, Surrogate):
            raise TypeError(f"DCT.surrogate must be a jaxrob.snn Surrogate (e.g. Triangle(1.0)), "
                            f"got {self.surrogate!r}")

    # -- static geometry ------------------------------------------------------------------------

    @property
    def normalized(self) -> bool:
        return True

    @property
    def _stride(self) -> int:
        return self.block if self.stride is None else int(self.stride)

    @property
    def _k(self) -> int:
        return self.block ** 2 if self.frequencies is None else int(self.frequencies)

    def period(self) -> int:
        """Number ``K`` of frequencies used: the accumulator input repeats every ``K`` steps."""
        return self._k

    def _blocks(self, h: int, w: int) -> tuple[int, int]:
        b, s = self.block, self._stride
        if h < b or w < b:
            raise ValueError(f"DCT(block={b}) needs images of at least {b}x{b} pixels, got {h}x{w}")
        if self.layout == "fold" and ((h - b) % s or (w - b) % s):
            raise ValueError(f"DCT(layout='fold', block={b}, stride={s}) must cover every pixel: "
                             f"(H - block) and (W - block) must be multiples of the stride, got H={h}, W={w}")
        return (h - b) // s + 1, (w - b) // s + 1

    def output_shape(self, shape):
        """``(N, Bh * block, Bw * block, C)`` in the ``"tile"`` layout (``Bh = (H - block) // stride + 1``
        blocks per column), ``shape`` itself in the ``"fold"`` layout."""
        n, h, w, c = shape
        if self.layout == "fold":
            self._blocks(h, w)
            return (n, h, w, c)
        bh, bw = self._blocks(h, w)
        return (n, bh * self.block, bw * self.block, c)

    def _index(self, nb: int) -> np.ndarray:
        """Pixel rows (or columns) of ``nb`` blocks: ``(nb, block)``."""
        return self._stride * np.arange(nb)[:, None] + np.arange(self.block)[None, :]

    # -- transforms -----------------------------------------------------------------------------

    def _color(self, x: jax.Array) -> jax.Array:
        if self.ycbcr and x.shape[-1] == 3:
            m = jnp.asarray(_YCBCR, x.dtype)
            return jnp.einsum("nhwc,dc->nhwd", x, m) + jnp.asarray(_YCBCR_OFFSET, x.dtype)
        return x

    def _coefficients(self, x: jax.Array) -> jax.Array:
        """All ``block**2`` zig-zag DCT coefficients of every block: ``(b*b, N, Bh, Bw, C)``."""
        n, h, w, c = x.shape
        bh, bw = self._blocks(h, w)
        rows, cols = self._index(bh), self._index(bw)
        patches = x[:, rows][:, :, :, cols]                  # (N, Bh, b, Bw, b, C)
        basis = dct_basis(self.block, x.dtype)
        return jnp.einsum("kij,npiqjc->knpqc", basis, patches)

    def _place(self, coef: jax.Array, basis: jax.Array, hw: tuple[int, int]) -> jax.Array:
        """Component images of coefficients ``(..., N, Bh, Bw, C)`` times basis images ``(..., b, b)``."""
        b = self.block
        comp = coef[..., :, :, None, :, None, :] * basis[..., None, None, :, None, :, None]
        lead, (n, bh, _, bw, _, c) = comp.shape[:-6], comp.shape[-6:]
        if self.layout == "tile":
            return comp.reshape(*lead, n, bh * b, bw * b, c)
        rows, cols = self._index(bh), self._index(bw)
        out = jnp.zeros((*lead, n, *hw, c), comp.dtype)
        out = out.at[..., :, rows[:, :, None, None], cols[None, None, :, :], :].add(comp)
        cover = np.zeros(hw)
        np.add.at(cover, (rows[:, :, None, None], cols[None, None, :, :]), 1.0)
        return out / jnp.asarray(cover[:, :, None], comp.dtype)

    def components(self, x: jax.Array) -> jax.Array:
        """The per-frequency component images the accumulator integrates, in zig-zag order.

        Args:
          x: ``(N, H, W, C)`` normalised images.

        Returns:
          ``(K, *output_shape(x.shape))``: component ``k`` is ``c_k * basis[k]`` placed per block
          (after the YCbCr conversion); summed over all ``block**2`` frequencies they give
          the (colour-converted) image, tiled or folded.
        """
        x = _images(x, raw=False)
        coef = self._coefficients(self._color(x))[: self._k]
        return self._place(coef, dct_basis(self.block, x.dtype)[: self._k], x.shape[1:3])

    def init(self, x, *, key=None):
        """State: the coefficients of the ``K`` frequencies used, a zero accumulator and the thresholds."""
        _optional_key(key)
        x = _images(x, raw=False)
        n, h, w, c = x.shape
        y = self._color(x)
        coef = self._coefficients(y)
        if self.thresholds is None:
            everything = self._place(jax.lax.stop_gradient(coef), dct_basis(self.block, x.dtype), (h, w))
            flat = jnp.moveaxis(everything, 1, 0).reshape(n, -1)
            th_neg, th_pos = _percentiles(flat, self.percentiles)
            tiny = jnp.finfo(x.dtype).tiny
            th_neg, th_pos = jnp.minimum(th_neg, -tiny), jnp.maximum(th_pos, tiny)
        else:
            th_neg = jnp.full((n,), self.thresholds[0], x.dtype)
            th_pos = jnp.full((n,), self.thresholds[1], x.dtype)
        shape = (n, 1, 1, 1)
        mem = jnp.zeros(self.output_shape(x.shape), x.dtype)
        return DCTState(coef[: self._k], mem, th_pos.reshape(shape).astype(x.dtype),
                        th_neg.reshape(shape).astype(x.dtype))

    def step(self, state, t):
        t = _timestep(t)
        k = jnp.remainder(t, self._k)
        coef = jax.lax.dynamic_index_in_dim(state.coef, k, 0, keepdims=False)
        basis = jax.lax.dynamic_index_in_dim(dct_basis(self.block, coef.dtype)[: self._k], k, 0, keepdims=False)
        hw = state.mem.shape[1:3] if self.layout == "fold" else None
        v = state.mem + self._place(coef, basis, hw)
        th_pos, th_neg = jax.lax.stop_gradient(state.th_pos), jax.lax.stop_gradient(state.th_neg)
        pos = self.surrogate((v - th_pos) / th_pos)          # v > th_pos   (exact sign of v - th)
        neg = self.surrogate((v - th_neg) / th_neg)          # v < th_neg   (th_neg < 0)
        reset = pos * th_pos + neg * th_neg
        if self.detach_reset:
            reset = jax.lax.stop_gradient(reset)
        return state._replace(mem=v - reset), pos - neg


# ---------------------------------------------------------------------------------------------
# registry

ENCODERS: dict[str, type[Encoder]] = {
    "direct": Direct, "poisson": PoissonRate, "latency": Latency, "dct": DCT,
}


def encoder(name: str | Encoder, **hyper) -> Encoder:
    """An encoder by name (``"direct"``, ``"poisson"``, ``"latency"``, ``"dct"``) with its hyperparameters.

    An :class:`Encoder` instance is returned unchanged (``hyper`` must then be empty).

    Example:
      >>> encoder("dct", block=4, stride=2).period()
      16
    """
    if isinstance(name, Encoder):
        if hyper:
            raise ValueError(f"hyperparameters {sorted(hyper)} given with an encoder instance {name!r}")
        return name
    _validate.choice("encoder", name, ENCODERS)
    return ENCODERS[name](**hyper)

