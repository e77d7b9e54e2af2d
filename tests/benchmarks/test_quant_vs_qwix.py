"""jaxrob's fake_quant reproduces qwix's int8/int4 per-channel weight quantization exactly (skipped without qwix)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.quant._uniform import fake_quant

qwix = pytest.importorskip("qwix")


@pytest.mark.parametrize("bits, qtype", [(8, jnp.int8), (4, jnp.int4)])
def test_same_outputs_as_qwix(bits, qtype):
    w = np.random.default_rng(bits).standard_normal((3, 3, 4, 8)).astype(np.float32)   # HWIO conv kernel

    @jax.jit
    def both(w):
        theirs = qwix.dequantize(qwix.quantize(w, qtype, channelwise_axes=[3]))
        am = jnp.max(jnp.abs(w), axis=(0, 1, 2), keepdims=True)
        ours = fake_quant(w, bits=bits, scale=am / (2 ** (bits - 1) - 0.5), narrow_range=False, axis=-1)
        return ours, theirs

    ours, theirs = both(w)
    np.testing.assert_array_equal(ours, theirs)
    assert max(len(np.unique(np.asarray(ours)[..., j])) for j in range(8)) <= 2 ** bits
