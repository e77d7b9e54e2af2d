"""The torch twins in ``benchmarks/torch_models.py`` compute what the jaxrob models compute.

Skipped when torch is not installed (it is an optional ``bench`` dependency).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402

from jaxrob import models  # noqa: E402

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "torch_models.py"


@pytest.fixture(scope="module")
def tm():
    spec = importlib.util.spec_from_file_location("bench_torch_models", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _perturbed(variables, seed):
    """Random non-default weights and batch-norm statistics, so every converted entry matters."""
    rng = np.random.default_rng(seed)

    def noisy(tree, scale, positive=()):
        return {k: noisy(v, scale, positive) if isinstance(v, dict)
                else (np.abs if k in positive else np.asarray)(
                    np.asarray(v) + scale * rng.standard_normal(np.shape(v)).astype(np.float32))
                for k, v in tree.items()}

    return {"params": noisy(variables["params"], 0.05),
            "batch_stats": noisy(variables["batch_stats"], 0.3, positive=("var",))}


@pytest.mark.parametrize("name,shape", [("cnn_small", (28, 28, 1)), ("resnet20", (32, 32, 3))])
def test_twin_logits_match(tm, name, shape):
    model = models.create(name, num_classes=10, key=jax.random.key(0))
    variables = _perturbed(model.variables, seed=1)
    net = tm.torch_twin(name, variables)
    x = np.random.default_rng(2).uniform(size=(8, *shape)).astype(np.float32)
    expected = np.asarray(model.apply_fn(variables, x))
    with torch.no_grad():
        got = net(torch.from_numpy(tm.nhwc_to_nchw(x))).numpy()
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=1e-4)
    assert np.all(got.argmax(1) == expected.argmax(1))


def test_flatten_permutation_is_needed(tm):
    """Without the NHWC -> NCHW row permutation of fc1 the logits differ (the test above can fail)."""
    model = models.create("cnn_small", num_classes=10, key=jax.random.key(0))
    variables = _perturbed(model.variables, seed=3)
    sd = tm.state_dict_from_jaxrob(variables)   # no flattened_from: plain transpose
    net = tm.TorchSmallCNN(10).eval()
    net.load_state_dict(sd)
    x = np.random.default_rng(4).uniform(size=(8, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(tm.nhwc_to_nchw(x))).numpy()
    assert np.max(np.abs(got - np.asarray(model.apply_fn(variables, x)))) > 1e-2


def test_dense_permutation_matches_flatten_orders(tm):
    h, w, c, out = 2, 3, 4, 5
    k = np.random.default_rng(5).standard_normal((h * w * c, out)).astype(np.float32)
    fmap = np.random.default_rng(6).standard_normal((h, w, c)).astype(np.float32)
    w_t = tm.dense_from_nhwc_flatten(k, (h, w, c))
    np.testing.assert_allclose(w_t @ fmap.transpose(2, 0, 1).reshape(-1), fmap.reshape(-1) @ k, rtol=1e-5, atol=1e-5)


def test_converter_rejects_unknown_leaves(tm):
    with pytest.raises(ValueError, match="don't know how to convert"):
        tm.state_dict_from_jaxrob({"params": {"layer": {"weird": np.zeros(3)}}, "batch_stats": {}})
    with pytest.raises(ValueError, match="flattened_from"):
        tm.state_dict_from_jaxrob({"params": {"fc": {"kernel": np.zeros((4, 2))}}, "batch_stats": {}},
                                  flattened_from={"nope": (1, 2, 2)})
