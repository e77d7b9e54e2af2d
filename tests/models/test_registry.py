"""Registry, argument validation, parameter counts and initialisation of jaxrob.models."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrob import models

KEY = jax.random.key(0)


# --------------------------------------------------------------------------- registry & errors


def test_available_lists_the_zoo():
    names = models.available()
    assert names == sorted(names)
    assert set(names) == {"mlp", "cnn_small", "resnet20", "resnet32", "resnet56", "preact_resnet18",
                          "wide_resnet", "wrn28_10", "wrn34_10", "vgg11_bn", "vgg16_bn", "mobilenet_v2"}


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown model name 'resnet18'") as err:
        models.create("resnet18", key=KEY)
    for name in models.available():
        assert name in str(err.value)


@pytest.mark.parametrize("name, kwargs, error, match", [
    (3, {}, TypeError, "name must be a model name"),
    ("mlp", {"num_classes": 1}, ValueError, "num_classes must be >= 2"),
    ("mlp", {"num_classes": 2.5}, ValueError, "num_classes must be an integer"),
    ("mlp", {"num_classes": "10"}, TypeError, "num_classes"),
    ("mlp", {"input_shape": (28, 28)}, ValueError, r"input_shape must be a 3-tuple \(H, W, C\)"),
    ("mlp", {"input_shape": (28, 28, 0)}, ValueError, r"input_shape\[2\] must be a positive integer"),
    ("mlp", {"input_shape": (28, 28, 1.5)}, TypeError, r"input_shape\[2\]"),
    ("mlp", {"key": 0}, TypeError, "key must be a PRNG key"),
    ("resnet20", {"width": 2}, TypeError, "unexpected keyword argument.*width.*options are: none"),
    ("wide_resnet", {"widht": 2}, TypeError, "widht.*options are: depth, width, dropout"),
    ("mlp", {"hidden_sizes": 256}, TypeError, "hidden_sizes must be a tuple"),
    ("mlp", {"hidden_sizes": (256, 0)}, ValueError, r"hidden_sizes\[1\] must be a positive integer"),
    ("wide_resnet", {"depth": 27}, ValueError, r"depth must be 6n \+ 4"),
    ("wide_resnet", {"width": 0}, ValueError, "width must be a positive integer"),
    ("wrn28_10", {"dropout": 1.0}, ValueError, "dropout must be < 1.0"),
    ("mobilenet_v2", {"width_mult": 0.0}, ValueError, "width_mult must be > 0"),
    ("mlp", {"input_shape": (8, 8, 3), "mean": (0.5, 0.5)}, ValueError, "mean must be a number or a sequence of 3"),
    ("mlp", {"std": 0.0}, ValueError, "std must be finite and > 0"),
    ("mlp", {"mean": "zero"}, ValueError, "mean must be a number or a sequence of 1"),
    ("mlp", {"input_shape": (8, 8, 2)}, ValueError, "no default normalisation for 2-channel inputs"),
    ("mlp", {"dtype": jnp.int32}, TypeError, "dtype must be a floating dtype"),
    ("cnn_small", {"input_shape": (2, 2, 1)}, ValueError, "height and width >= 4"),
    ("vgg16_bn", {"input_shape": (16, 16, 3)}, ValueError, "height and width >= 32"),
])
def test_bad_arguments_raise_clear_errors(name, kwargs, error, match):
    kwargs = {"key": KEY, **kwargs}
    with pytest.raises(error, match=match):
        models.create(name, **kwargs)


def test_legacy_uint32_key_is_accepted_and_equivalent():
    raw = jax.random.PRNGKey(3)
    a = models.create("mlp", key=raw, input_shape=(4, 4, 1), hidden_sizes=(8,)).variables
    b = models.create("mlp", key=jax.random.wrap_key_data(raw), input_shape=(4, 4, 1), hidden_sizes=(8,)).variables
    jax.tree.map(np.testing.assert_array_equal, a, b)


# --------------------------------------------------------------------------- parameter counts
# Independent closed forms of each architecture's trainable-parameter count (BN
# scale and offset included, running statistics excluded), checked exactly, and
# the published counts, checked to 1%.


def cifar_resnet_count(depth, k=10, c=3):
    n = (depth - 2) // 6
    total, cin = 9 * c * 16 + 2 * 16, 16
    for cout in (16, 32, 64):
        for _ in range(n):
            total += 9 * cin * cout + 9 * cout * cout + 2 * cout + 2 * cout
            cin = cout
    return total + 64 * k + k


def preact_count(stem, widths, blocks, k=10, c=3):
    total, cin = 9 * c * stem, stem
    for w, n in zip(widths, blocks):
        for _ in range(n):
            projection = cin * w if cin != w else 0
            total += 2 * cin + 9 * cin * w + 2 * w + 9 * w * w + projection
            cin = w
    return total + 2 * cin + cin * k + k


def wrn_count(depth, width, k=10):
    n = (depth - 4) // 6
    return preact_count(16, (16 * width, 32 * width, 64 * width), (n, n, n), k)


def vgg_count(config, k=10, c=3):
    total, cin = 0, c
    for v in config:
        if v != "M":
            total += 9 * cin * v + v + 2 * v
            cin = v
    return total + cin * k + k


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

# name, kwargs, closed form, published count (millions) and its source.
COUNTS = [
    ("mlp", {}, 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10, None),
    ("cnn_small", {}, (9 * 32 + 32) + (9 * 32 * 64 + 64) + (7 * 7 * 64 * 256 + 256) + (256 * 10 + 10), None),
    ("resnet20", {}, cifar_resnet_count(20), 0.27),          # He et al. 2016, Table 6
    ("resnet32", {}, cifar_resnet_count(32), 0.46),
    ("resnet56", {}, cifar_resnet_count(56), 0.85),
    ("preact_resnet18", {}, preact_count(64, (64, 128, 256, 512), (2, 2, 2, 2)), 11.17),
    ("wrn28_10", {}, wrn_count(28, 10), 36.5),                 # Zagoruyko & Komodakis, Table 4
    ("wrn34_10", {}, wrn_count(34, 10), 46.16),                # RobustBench's WRN-34-10
    ("wide_resnet", {"depth": 16, "width": 8}, wrn_count(16, 8), 11.0),   # WRN-16-8, Table 4
    ("wide_resnet", {"depth": 40, "width": 4}, wrn_count(40, 4), 8.9),    # WRN-40-4, Table 4
    ("vgg11_bn", {}, vgg_count(VGG11), 9.23),
    ("vgg16_bn", {}, vgg_count(VGG16), 14.7),
    # torchvision's mobilenet_v2 has 3,504,872 parameters with its 1000-way head of
    # 1280 * 1000 + 1000; with a 10-way head that is 2,236,682.
    ("mobilenet_v2", {}, 3_504_872 - 1_281_000 + 12_810, 2.24),
]


@pytest.mark.parametrize("name, kwargs, closed_form, published", COUNTS,
                         ids=[f"{c[0]}{c[1] or ''}" for c in COUNTS])
def test_parameter_counts(name, kwargs, closed_form, published, abstract):
    n = abstract(name, **kwargs).num_params()
    assert n == closed_form
    if published is not None:
        assert abs(n / 1e6 - published) <= 0.01 * published


def test_mobilenet_v2_matches_torchvision_with_1000_classes(abstract):
    assert abstract("mobilenet_v2", num_classes=1000).num_params() == 3_504_872


def test_mobilenet_v2_width_multiplier_scales_parameters(abstract):
    assert abstract("mobilenet_v2", width_mult=0.5).num_params() < abstract("mobilenet_v2").num_params()


def test_counts_follow_num_classes_and_input_channels(abstract):
    base = abstract("resnet20").num_params()
    assert abstract("resnet20", num_classes=100).num_params() == base + 90 * 65
    gray = abstract("resnet20", input_shape=(32, 32, 1)).num_params()
    assert gray == base - 9 * 2 * 16
    small = models.create_abstract("mlp", input_shape=(8, 8, 3), hidden_sizes=(100,), num_classes=3)
    assert small.num_params() == 192 * 100 + 100 + 100 * 3 + 3


def test_batch_stats_mirror_batch_norm_parameters(abstract):
    model = abstract("resnet20")
    stats = dict(jax.tree_util.tree_flatten_with_path(model.variables["batch_stats"])[0])
    params = dict(jax.tree_util.tree_flatten_with_path(model.params)[0])
    assert stats
    for path, leaf in stats.items():
        name = path[-1].key
        assert name in ("mean", "var")
        assert params[path[:-1] + (jax.tree_util.DictKey("scale"),)].shape == leaf.shape
    assert abstract("cnn_small").variables["batch_stats"] == {}


def test_architecture_details(abstract):
    resnet = abstract("resnet56").params
    assert not any("shortcut" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(resnet))
    assert [len(resnet[f"layer{s}"]) for s in (1, 2, 3)] == [9, 9, 9]
    preact = abstract("preact_resnet18").params
    assert "shortcut" not in preact["layer1"][0]
    assert [preact[f"layer{s}"][0]["shortcut"]["kernel"].shape for s in (2, 3, 4)] == [
        (1, 1, 64, 128), (1, 1, 128, 256), (1, 1, 256, 512)]
    wrn = abstract("wrn28_10").params
    assert wrn["layer1"][0]["shortcut"]["kernel"].shape == (1, 1, 16, 160)
    assert wrn["fc"]["kernel"].shape == (640, 10)
    vgg = abstract("vgg16_bn").params
    assert len(vgg["features"]) == 13 and vgg["fc"]["kernel"].shape == (512, 10)
    net = nnx.eval_shape(lambda: models.create_module("mobilenet_v2", key=KEY))
    assert len(net.blocks) == 17
    assert sum(b.residual for b in net.blocks) == 10
    # CIFAR adaptation: 32 -> 16 -> 8 -> 4, i.e. only three stride-2 depthwise convolutions.
    assert [b.depthwise.strides for b in net.blocks].count(2) == 3


# --------------------------------------------------------------------------- initialisation


def test_initialisation_statistics():
    v = models.create("resnet20", key=KEY).variables
    kernel = np.asarray(v["params"]["layer3"][1]["conv1"]["kernel"])  # (3, 3, 64, 64)
    assert abs(kernel.mean()) < 0.01 * kernel.std() * 10
    np.testing.assert_allclose(kernel.std(), math.sqrt(2 / (9 * 64)), rtol=0.03)   # He fan-out
    head = np.asarray(v["params"]["fc"]["kernel"])
    np.testing.assert_allclose(head.std(), math.sqrt(1 / 64), rtol=0.12)           # LeCun
    np.testing.assert_array_equal(v["params"]["fc"]["bias"], 0)
    np.testing.assert_array_equal(v["params"]["bn1"]["scale"], 1)
    np.testing.assert_array_equal(v["params"]["bn1"]["bias"], 0)
    np.testing.assert_array_equal(v["batch_stats"]["bn1"]["mean"], 0)
    np.testing.assert_array_equal(v["batch_stats"]["bn1"]["var"], 1)
    fc1 = np.asarray(models.create("cnn_small", key=KEY).params["fc1"]["kernel"])
    np.testing.assert_allclose(fc1.std(), math.sqrt(2 / 3136), rtol=0.01)           # He fan-in
    # Layers are drawn independently (no two kernels share samples).
    a = np.asarray(v["params"]["layer3"][1]["conv1"]["kernel"]).ravel()
    b = np.asarray(v["params"]["layer3"][1]["conv2"]["kernel"]).ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03


def test_same_key_same_model_and_different_key_different_model():
    make = lambda k: models.create("mlp", key=k, input_shape=(4, 4, 1), hidden_sizes=(8,)).variables
    a, b, c = make(KEY), make(KEY), make(jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(a["params"]["head"]["kernel"], c["params"]["head"]["kernel"])


def test_traced_initialisation_equals_eager():
    # 16*16*1 * 300 = 76,800 weights: more than one sampling chunk.
    kw = dict(input_shape=(16, 16, 1), hidden_sizes=(300,))
    eager = models.create("mlp", key=KEY, **kw).variables
    # A traced key, and a concrete key used inside a trace.
    traced, closed_over = jax.jit(lambda k: (models.create("mlp", key=k, **kw).variables,
                                             models.create("mlp", key=KEY, **kw).variables))(KEY)
    for other in (traced, closed_over):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), eager, other)


def test_create_abstract_matches_create(abstract):
    for name in ("cnn_small", "resnet20"):
        real = models.create(name, key=KEY).variables
        spec = abstract(name).variables
        assert jax.tree.structure(real) == jax.tree.structure(spec)
        jax.tree.map(lambda r, a: (r.shape, r.dtype) == (a.shape, a.dtype) or pytest.fail(str(a)), real, spec)
