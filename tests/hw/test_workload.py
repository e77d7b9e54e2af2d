"""Tests of workload extraction, the architecture-only workloads and SCALE-Sim topology files."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxrob import models
from jaxrob.hw._workload import (SCALESIM_HEADER, Workload, bert_base_layer, extract, make_workload,
                                 mobilenet_v2, resnet50, to_scalesim_topology)


def _macs(wl: Workload) -> int:
    return int(round(float(np.sum(np.asarray(wl.macs, np.float64)))))


def _ints(x) -> list[int]:
    return [int(v) for v in np.asarray(x)]


# ------------------------------------------------------------------------------ jaxrob models


@pytest.fixture(scope="module")
def resnet20():
    return models.create("resnet20", key=jax.random.key(0))


def test_resnet20_layer_count_and_macs_by_hand(resnet20):
    wl, infos = extract(resnet20.apply_fn, resnet20.variables, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    # Hand count (He et al. 2016, CIFAR ResNet-20: 3x3 convs, option-A shortcuts have no MACs):
    stem = 32 * 32 * (3 * 3 * 3) * 16                       # 3 -> 16 at 32x32
    stage1 = 3 * 2 * (32 * 32 * (3 * 3 * 16) * 16)          # 3 blocks x 2 convs, 16 -> 16 at 32x32
    stage2 = (16 * 16 * (3 * 3 * 16) * 32                   # block 0 conv1: 16 -> 32, stride 2 -> 16x16
              + 5 * (16 * 16 * (3 * 3 * 32) * 32))          # block 0 conv2 + 2 blocks x 2 convs
    stage3 = (8 * 8 * (3 * 3 * 32) * 64                     # block 0 conv1: 32 -> 64, stride 2 -> 8x8
              + 5 * (8 * 8 * (3 * 3 * 64) * 64))
    fc = 64 * 10
    assert len(infos) == 1 + 3 * 6 + 1 == 20
    assert [i.kind for i in infos] == ["conv"] * 19 + ["dense"]
    assert _macs(wl) == stem + stage1 + stage2 + stage3 + fc == 40_551_040
    assert _ints(wl.m)[:3] == [1024, 1024, 1024] and int(wl.m[-1]) == 1
    assert infos[0].filter_hw == (3, 3) and infos[0].channels == 3 and infos[0].ofmap_hw == (32, 32)
    assert infos[0].param is not None and "conv1" in infos[0].param and infos[-1].param.endswith("kernel")
    assert infos[0].act_dtype == "float32"
    # Real (random normal) weights have no zeros; all leaves are concrete here.
    np.testing.assert_allclose(np.asarray(wl.weight_density), 1.0)
    assert np.all(np.asarray(wl.count) == 1) and np.all(np.asarray(wl.groups) == 1)
    # The batch multiplies M (and MACs) and nothing else.
    wl4, _ = extract(resnet20.apply_fn, resnet20.variables, jnp.zeros((4, 32, 32, 3)))
    np.testing.assert_array_equal(np.asarray(wl4.m), 4 * np.asarray(wl.m))
    np.testing.assert_array_equal(np.asarray(wl4.k), np.asarray(wl.k))


def test_mlp_and_cnn_small_by_hand():
    mlp = models.create("mlp", key=jax.random.key(1))
    wl, infos = extract(mlp.apply_fn, mlp.variables, jnp.zeros((2, 28, 28, 1)))
    assert [i.kind for i in infos] == ["dense"] * 3
    assert list(zip(_ints(wl.m), _ints(wl.k), _ints(wl.n))) == [(2, 784, 256), (2, 256, 256), (2, 256, 10)]
    assert _macs(wl) == 2 * (784 * 256 + 256 * 256 + 256 * 10)

    cnn = models.create("cnn_small", key=jax.random.key(2))
    wl, infos = extract(cnn.apply_fn, cnn.variables, jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
    assert [i.kind for i in infos] == ["conv", "conv", "dense", "dense"]
    conv1 = 28 * 28 * (3 * 3 * 1) * 32      # SAME, 28x28
    conv2 = 14 * 14 * (3 * 3 * 32) * 64     # after the 2x2 pool
    fc1 = (7 * 7 * 64) * 256
    fc2 = 256 * 10
    assert _ints(wl.macs) == [conv1, conv2, fc1, fc2]
    assert infos[1].ifmap_hw == (16, 16)    # 14 + SAME padding 1 + 1, as SCALE-Sim needs it


def test_weight_density_from_concrete_leaves_and_abstract_params():
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w1[:, :8] = 0.0                                   # 25% zeros
    w2 = rng.normal(size=(32, 4)).astype(np.float32)
    w2[rng.random(w2.shape) < 0.5] = 0.0
    p = {"a": jnp.asarray(w1), "b": jnp.asarray(w2)}

    def f(p, x):  # the second weight is transposed twice and cast: layout-only
        wb = p["b"].T.astype(jnp.bfloat16).astype(jnp.float32).T
        return jax.nn.relu(x @ p["a"]) @ wb

    wl, infos = extract(f, p, jnp.ones((3, 16)))
    np.testing.assert_allclose(np.asarray(wl.weight_density), [0.75, np.count_nonzero(w2) / w2.size], rtol=1e-6)
    assert [i.param for i in infos] == ["a", "b"]
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), p)
    wl_abs, _ = extract(f, abstract, jax.ShapeDtypeStruct((3, 16), jnp.float32))
    np.testing.assert_array_equal(np.asarray(wl_abs.weight_density), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(wl_abs.macs), np.asarray(wl.macs))
    # A weight computed from params by arithmetic is still a weight (dense), density unknown -> 1.
    wl2, infos2 = extract(lambda p, x: x @ (2.0 * p["a"]), p, jnp.ones((3, 16)))
    assert infos2[0].kind == "dense" and infos2[0].param is None and float(wl2.weight_density[0]) == 1.0


# ------------------------------------------------------------------------------ hand-written functions


def _attention(p, x, heads=4):
    b, t, d = x.shape
    dh = d // heads
    q, k, v = ((x @ p[n]).reshape(b, t, heads, dh).transpose(0, 2, 1, 3) for n in ("wq", "wk", "wv"))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)       # (b, h, t, t): batch dims (b, h)
    a = jax.nn.softmax(s, axis=-1) @ v                      # (b, h, t, dh)
    return a.transpose(0, 2, 1, 3).reshape(b, t, d) @ p["wo"]


def test_attention_batch_dims_become_groups():
    d, heads, b, t = 32, 4, 2, 10
    p = {n: jnp.ones((d, d)) for n in ("wq", "wk", "wv", "wo")}
    wl, infos = extract(_attention, p, jax.ShapeDtypeStruct((b, t, d), jnp.float32))
    assert [i.kind for i in infos] == ["dense"] * 3 + ["matmul"] * 2 + ["dense"]
    rows = list(zip(_ints(wl.m), _ints(wl.k), _ints(wl.n), _ints(wl.groups)))
    assert rows[0] == (b * t, d, d, 1)
    assert rows[3] == (t, d // heads, t, b * heads)      # Q K^T per (batch, head)
    assert rows[4] == (t, t, d // heads, b * heads)      # A V per (batch, head)
    assert _macs(wl) == 4 * b * t * d * d + 2 * b * heads * t * t * (d // heads)
    assert infos[3].param is None and float(wl.weight_density[3]) == 1.0


def test_weight_on_the_left_and_nested_calls():
    p = {"w": jnp.ones((5, 7)), "c": jnp.ones((3, 3, 2, 4))}

    @jax.custom_jvp
    def act(z):
        return jnp.maximum(z, 0.0)

    act.defjvp(lambda primals, tangents: (act(primals[0]), tangents[0] * (primals[0] > 0)))

    @jax.jit
    def inner(w, z):  # (out, in) weight applied as W @ z^T
        return jax.checkpoint(lambda w, z: w @ z.T)(w, z)

    def f(p, x):
        h = lax.conv_general_dilated(x, p["c"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = act(h).mean(axis=(1, 2, 3))                   # (B,)
        z = jnp.broadcast_to(h[:, None], (h.shape[0], 7))
        return inner(p["w"], z)

    wl, infos = extract(f, p, jnp.ones((6, 8, 8, 2)))
    assert [i.kind for i in infos] == ["conv", "dense"]
    # W (5x7) @ z^T (7x6): M is the activation's free size (6 rows), N the weight's (5).
    assert (int(wl.m[1]), int(wl.k[1]), int(wl.n[1])) == (6, 7, 5)
    assert infos[1].param == "w"
    assert int(wl.m[0]) == 6 * 8 * 8 and int(wl.k[0]) == 3 * 3 * 2 and int(wl.n[0]) == 4


def test_scan_multiplies_count_and_rnn_carry_fixpoint():
    layers, d, b = 5, 8, 3
    stacked = jnp.ones((layers, d, d))

    def deep(p, x):
        def body(h, w):
            return jnp.tanh(h @ w), None
        return lax.scan(body, x, p["w"])[0]

    wl, infos = extract(deep, {"w": stacked}, jnp.ones((b, d)))
    assert len(infos) == 1 and infos[0].kind == "dense" and infos[0].param == "w"
    assert int(wl.count[0]) == layers and _macs(wl) == layers * b * d * d

    def nested(p, x):
        def outer(h, _):
            return deep(p, h), None
        return lax.scan(outer, x, None, length=4)[0]

    wl, _ = extract(nested, {"w": stacked}, jnp.ones((b, d)))
    assert int(wl.count[0]) == 4 * layers

    # An RNN whose state starts at zeros (input-independent) but depends on x after one step:
    # h @ U must be a dense layer, not a weight-only product.
    steps = 6

    def rnn(p, xs):  # xs: (T, B, D)
        def body(h, x_t):
            h = jnp.tanh(h @ p["u"] + x_t @ p["w"])
            return h, h
        return lax.scan(body, jnp.zeros((b, d)), xs)[1]

    wl, infos = extract(rnn, {"u": jnp.ones((d, d)), "w": jnp.ones((d, d))}, jnp.ones((steps, b, d)))
    assert [i.kind for i in infos] == ["dense", "dense"] and [i.param for i in infos] == ["u", "w"]
    assert _ints(wl.count) == [steps, steps]


def test_cond_takes_the_costlier_branch_and_while_counts_once():
    p = {"small": jnp.ones((4, 2)), "big": jnp.ones((4, 64))}

    def f(p, x):
        return lax.cond(x.sum() > 0, lambda z: (z @ p["small"]).sum(), lambda z: (z @ p["big"]).sum(), x)

    wl, infos = extract(f, p, jnp.ones((3, 4)))
    assert len(infos) == 1 and infos[0].param == "big" and _macs(wl) == 3 * 4 * 64

    def g(p, x):
        return lax.while_loop(lambda c: c[1] < 10, lambda c: (jnp.tanh(c[0] @ p["w"]), c[1] + 1), (x, 0))[0]

    wl, infos = extract(g, {"w": jnp.ones((4, 4))}, jnp.ones((3, 4)))
    assert len(infos) == 1 and int(wl.count[0]) == 1


@pytest.mark.parametrize("layout", [("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")])
def test_depthwise_and_grouped_conv(layout):
    b, h, c, mult = 2, 9, 6, 2
    lhs_shape = (b, h, h, c) if layout[0] == "NHWC" else (b, c, h, h)
    rhs_shape = (3, 3, 1, c * mult) if layout[1] == "HWIO" else (c * mult, 1, 3, 3)

    def f(p, x):
        return lax.conv_general_dilated(x, p["k"], (2, 2), ((1, 1), (1, 1)), dimension_numbers=layout,
                                        feature_group_count=c)

    wl, infos = extract(f, {"k": jnp.ones(rhs_shape)}, jnp.ones(lhs_shape))
    ho = (h + 2 - 3) // 2 + 1
    assert (int(wl.groups[0]), int(wl.m[0]), int(wl.k[0]), int(wl.n[0])) == (c, b * ho * ho, 9, mult)
    assert _macs(wl) == b * ho * ho * c * mult * 9     # each output channel sees 1 input channel
    assert infos[0].channels == 1 and infos[0].stride == 2 and infos[0].ofmap_hw == (ho, ho)

    def grouped(p, x):
        return lax.conv_general_dilated(x, p["k"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=2)

    wl, _ = extract(grouped, {"k": jnp.ones((3, 3, 3, 8))}, jnp.ones((1, 5, 5, 6)))
    assert (int(wl.groups[0]), int(wl.k[0]), int(wl.n[0])) == (2, 27, 4)
    assert _macs(wl) == (3 * 3) * 8 * (3 * 3 * 3)      # 3x3 outputs x 8 filters x 27 taps each


def test_bad_inputs_raise():
    p = {"w": jnp.ones((4, 4))}
    f = lambda p, x: x @ p["w"]  # noqa: E731
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        extract("not a function", p, jnp.ones((1, 4)))
    with pytest.raises(TypeError, match="ShapeDtypeStruct"):
        extract(f, p, [1.0, 2.0])
    with pytest.raises(ValueError, match="one entry per layer"):
        extract(f, p, jnp.ones((1, 4)), names=["a", "b"])
    with pytest.raises(ValueError, match="weight_bits must be >= 1"):
        extract(f, p, jnp.ones((1, 4)), weight_bits=0)
    with pytest.raises(ValueError, match="one value per layer"):
        extract(f, p, jnp.ones((1, 4)), act_bits=[8, 8])
    with pytest.raises(ValueError, match="depends on x"):
        extract(lambda p, x: x * p["w"][0], p, jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="batch must be >= 1"):
        resnet50(batch=0)
    with pytest.raises(ValueError, match="image must be >= 32"):
        mobilenet_v2(image=16)
    with pytest.raises(ValueError, match="width must be > 0"):
        mobilenet_v2(width=0.0)
    wl, infos = extract(f, p, jnp.ones((1, 4)), names=["proj"], weight_bits=[4], act_bits=6)
    assert infos[0].name == "proj" and float(wl.weight_bits[0]) == 4 and float(wl.act_bits[0]) == 6
    with pytest.raises(ValueError, match="infos has"):
        to_scalesim_topology(wl, infos + infos)
    with pytest.raises(ValueError, match="integers"):
        to_scalesim_topology(wl._replace(m=wl.m + 0.5), infos)


# ------------------------------------------------------------------------------ architecture-only workloads


def test_resnet50_totals():
    wl, infos = resnet50()
    assert len(infos) == 54 and sum(i.kind == "conv" for i in infos) == 53
    # Hand count, per stage (v1.5: stride in the 3x3 conv; first block has a 1x1 projection).
    total = 112 * 112 * (7 * 7 * 3) * 64                       # stem
    cin = 64
    for w, blocks, hin, hout in ((64, 3, 56, 56), (128, 4, 56, 28), (256, 6, 28, 14), (512, 3, 14, 7)):
        first = (hin * hin * cin * w + hout * hout * 9 * w * w + hout * hout * w * 4 * w
                 + hout * hout * cin * 4 * w)                 # conv1, conv2 (strided), conv3, downsample
        rest = (blocks - 1) * hout * hout * (4 * w * w + 9 * w * w + 4 * w * w)
        total += first + rest
        cin = 4 * w
    total += 2048 * 1000                                       # fc
    assert _macs(wl) == total
    assert abs(total / 4.09e9 - 1) < 0.005                     # torchvision's published 4.09 GMACs
    # Weights: torchvision's resnet50 has 25,557,032 parameters = conv/fc weights + fc bias +
    # 2 per batch-norm channel (one BN after every conv, on its output channels).
    weights = int(np.sum(np.asarray(wl.groups * wl.k * wl.n, np.float64)))
    bn_channels = int(np.sum(np.asarray(wl.groups * wl.n)[:-1]))
    assert weights + 1000 + 2 * bn_channels == 25_557_032
    assert infos[0].ifmap_hw == (229, 229) and infos[0].ofmap_hw == (112, 112)
    wl8, _ = resnet50(batch=8, image=256)
    assert int(wl8.m[0]) == 8 * 128 * 128


def test_mobilenet_v2_totals():
    wl, infos = mobilenet_v2()
    assert len(infos) == 53
    dw = [i for i, info in enumerate(infos) if info.name.endswith(".dw")]
    assert len(dw) == 17
    assert all(int(wl.k[i]) == 9 and int(wl.n[i]) == 1 and infos[i].channels == 1 for i in dw)
    assert [int(wl.groups[i]) for i in dw][:4] == [32, 96, 144, 144]
    total = _macs(wl)
    assert abs(total / 300e6 - 1) < 0.01                       # the paper's 300 M multiply-adds
    # torchvision's mobilenet_v2 has 3,504,872 parameters (weights + fc bias + 2 per BN channel).
    weights = int(np.sum(np.asarray(wl.groups * wl.k * wl.n, np.float64)))
    bn_channels = int(np.sum(np.asarray(wl.groups * wl.n)[:-1]))
    assert weights + 1000 + 2 * bn_channels == 3_504_872
    half, _ = mobilenet_v2(width=0.5)
    assert int(half.k[-1]) == 1280                             # the last conv keeps 1280 for width < 1
    # Other widths: 97 M (0.5) and 582 M (1.4) MACs in the TF-slim MobileNetV2 checkpoint table
    # (the paper's Table 4 quotes 585 M for 1.4).
    assert abs(_macs(half) / 97e6 - 1) < 0.01
    assert abs(_macs(mobilenet_v2(width=1.4)[0]) / 582e6 - 1) < 0.01


def test_bert_base_layer_by_hand():
    seq, b, d = 128, 2, 768
    wl, infos = bert_base_layer(seq_len=seq, batch=b)
    assert [i.name for i in infos] == ["q", "k", "v", "o", "qk", "av", "ffn1", "ffn2"]
    assert [i.kind for i in infos] == ["dense"] * 4 + ["matmul"] * 2 + ["dense"] * 2
    assert _macs(wl) == b * (4 * seq * d * d + 2 * 12 * seq * seq * 64 + 2 * seq * d * 3072)
    assert _macs(bert_base_layer()[0]) == 931_135_488
    wl12, _ = bert_base_layer(num_layers=12)
    assert _macs(wl12) == 12 * 931_135_488
    # The same layer written as a JAX function and extracted agrees, layer by layer.
    p = {n: jnp.ones((d, d)) for n in ("wq", "wk", "wv", "wo")}
    p |= {"w1": jnp.ones((d, 3072)), "w2": jnp.ones((3072, d))}

    def layer(p, x):
        h = _attention(p, x, heads=12)
        return jax.nn.gelu(h @ p["w1"]) @ p["w2"]

    ex, _ = extract(layer, p, jax.ShapeDtypeStruct((b, seq, d), jnp.float32))
    order = [0, 1, 2, 4, 5, 3, 6, 7]  # extraction sees q, k, v, qk, av, o, ffn1, ffn2
    for f in ("m", "k", "n", "groups"):
        np.testing.assert_array_equal(np.asarray(getattr(ex, f)), np.asarray(getattr(wl, f))[order])


# ------------------------------------------------------------------------------ SCALE-Sim topology


def _parse_like_scalesim(text: str) -> list[tuple[str, int, int, int]]:
    """Reads a topology CSV the way scale-sim-v3's ``topology_utils`` does (header skipped,
    trailing comma dropped, 'DP' rows expanded per channel, ofmap = ceil((H - F + S) / S))
    and returns ``(name, S_r, T, S_c)`` per simulated layer."""
    out = []
    for row in text.strip().splitlines()[1:]:
        elems = row.strip().split(",")[:-1]
        name = elems[0].strip()
        h, w, fh, fw, ch, nf, s = (int(e) for e in elems[1:8])
        assert fh <= h and fw <= w
        reps, ch = (ch, 1) if "DP" in name else (1, ch)
        oh, ow = math.ceil((h - fh + s) / s), math.ceil((w - fw + s) / s)
        out.extend([(name, oh * ow, fh * fw * ch, nf)] * reps)
    return out


@pytest.mark.parametrize("net", ["resnet50", "mobilenet_v2", "bert", "resnet20"])
def test_topology_maps_to_the_same_gemms(net, resnet20):
    if net == "resnet20":
        wl, infos = extract(resnet20.apply_fn, resnet20.variables, jnp.zeros((1, 32, 32, 3)))
    else:
        wl, infos = {"resnet50": resnet50, "mobilenet_v2": mobilenet_v2, "bert": bert_base_layer}[net]()
    text = to_scalesim_topology(wl, infos)
    assert text.splitlines()[0] == SCALESIM_HEADER and text.endswith(",\n")
    rows = _parse_like_scalesim(text)
    assert [(m, k, n) for _, m, k, n in rows] == list(zip(_ints(wl.m), _ints(wl.k), _ints(wl.n)))
    # Expanded: every GEMM of every group is simulated once.
    expanded = _parse_like_scalesim(to_scalesim_topology(wl, infos, expand=True))
    assert len(expanded) == int(np.sum(np.asarray(wl.groups * wl.count)))
    assert sum(m * k * n for _, m, k, n in expanded) == _macs(wl)


def test_topology_rows_written_as_convolutions():
    wl, infos = resnet50()
    lines = to_scalesim_topology(wl, infos).splitlines()
    assert lines[1] == "conv1, 229, 229, 7, 7, 3, 64, 2,"               # padded stem, 112x112 out
    assert lines[-1] == "fc, 1, 2048, 1, 2048, 1, 1000, 1,"             # SCALE-Sim's own GEMM form
    mb, minfos = mobilenet_v2()
    dw_lines = [line for line in to_scalesim_topology(mb, minfos, expand=True).splitlines() if "_DP" in line]
    assert dw_lines[0] == "block0.dw_DP, 114, 114, 3, 3, 32, 1, 1,"
    # A batch of 2 cannot be a SCALE-Sim convolution: GEMM form with M = 2 * 112 * 112.
    wl2, infos2 = resnet50(batch=2)
    assert to_scalesim_topology(wl2, infos2).splitlines()[1] == f"conv1, {2 * 112 * 112}, 147, 1, 147, 1, 64, 1,"


def test_workload_is_a_pytree_for_jit_and_vmap():
    wl, _ = bert_base_layer()
    total = jax.jit(lambda w: jnp.sum(w.macs))(wl)
    assert float(total) == pytest.approx(931_135_488, rel=1e-6)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), make_workload([1, 2], [3, 4], [5, 6]))
    np.testing.assert_allclose(jax.vmap(lambda w: jnp.sum(w.m * w.k * w.n))(stacked), [3 * 5 + 2 * 4 * 6, 8 * (15 + 48)])
