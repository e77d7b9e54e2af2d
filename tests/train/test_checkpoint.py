"""Checkpoints: exact resume, atomic saves, and loud failures on corrupt or mismatched checkpoints."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrob.train import CheckpointError, Checkpoints, TrainState, evaluate, fit, make_optimizer, pgd_at


def _assert_equal_trees(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _snapshot(directory):
    """{relative path: (size, mtime_ns)} of every file under ``directory``."""
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), directory)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def adam_state(bn_model):
    model = bn_model
    opt = make_optimizer("adam", learning_rate=1e-3)
    state = TrainState.create(model.params, opt, key=jax.random.key(3), batch_stats=model.variables["batch_stats"])
    # Make every leaf distinctive (and the step non-zero) so a mix-up cannot go unnoticed.
    leaves, treedef = jax.tree.flatten(state._replace(rng=jax.random.key_data(state.rng)))
    leaves = [np.asarray(l) + np.float32(i) if np.issubdtype(np.asarray(l).dtype, np.floating) else np.asarray(l)
              for i, l in enumerate(leaves)]
    s = jax.tree.unflatten(treedef, leaves)
    return s._replace(step=np.asarray(7, np.int32), rng=jax.random.key(3)), model


def test_round_trip_is_exact(adam_state, tmp_path):
    state, _ = adam_state
    with Checkpoints(tmp_path, fingerprint={"lr": 1e-3}) as ckpt:
        assert ckpt.save(state, extra={"note": [1, 2]}) == 7
        assert ckpt.steps() == [7] and ckpt.latest_step() == 7
    with Checkpoints(tmp_path, fingerprint={"lr": 1e-3}) as ckpt:
        template = jax.tree.map(np.zeros_like, state._replace(rng=jax.random.key_data(state.rng)))
        restored, extra = ckpt.restore(template._replace(rng=jax.random.key(0)))
    _assert_equal_trees(restored, state)
    assert extra == {"note": [1, 2]}
    assert jax.random.key_impl(restored.rng) == jax.random.key_impl(state.rng)


def test_never_overwrites_and_keeps_latest_n(adam_state, tmp_path):
    state, _ = adam_state
    with Checkpoints(tmp_path, max_to_keep=2) as ckpt:
        for s in (1, 2, 3):
            ckpt.save(state._replace(step=np.asarray(s, np.int32)))
        assert ckpt.steps() == [2, 3]
        before = _snapshot(tmp_path)
        with pytest.raises(CheckpointError, match="already exists"):
            ckpt.save(state._replace(step=np.asarray(3, np.int32)))
        assert _snapshot(tmp_path) == before
        with pytest.raises(CheckpointError, match="no complete checkpoint for step 1"):
            ckpt.restore(state, step=1)
    with Checkpoints(tmp_path / "empty") as ckpt:
        with pytest.raises(CheckpointError, match="no complete checkpoint"):
            ckpt.restore(state)


def test_mismatched_model_or_fingerprint(adam_state, foreign, tmp_path):
    state, _ = adam_state
    with Checkpoints(tmp_path, fingerprint={"loss": "ce", "lr": 0.1}) as ckpt:
        ckpt.save(state)
    with Checkpoints(tmp_path, fingerprint={"loss": "ce", "lr": 0.2}) as ckpt:
        with pytest.raises(CheckpointError, match=r"different run configuration:\n  lr: checkpoint has 0.1, run has 0.2"):
            ckpt.restore(state)
    apply_fn, make_params = foreign
    other = TrainState.create(make_params(), make_optimizer("adam", learning_rate=1e-3), key=jax.random.key(0))
    with Checkpoints(tmp_path) as ckpt:  # no fingerprint check: the array check still catches it
        with pytest.raises(CheckpointError, match=r"does not match the model(.|\n)*params/w: missing"):
            ckpt.restore(other)
        sgd = TrainState.create(state.params, make_optimizer("sgd", learning_rate=0.1), key=jax.random.key(0),
                                batch_stats=state.batch_stats)
        with pytest.raises(CheckpointError, match="opt_state"):
            ckpt.restore(sgd)
        wider = state._replace(params={**state.params, "fc2": {"kernel": np.zeros((8, 12), np.float32),
                                                             "bias": np.zeros(12, np.float32)}})
        with pytest.raises(CheckpointError, match=r"params/fc2/kernel: checkpoint has \(\(8, 10\), 'float32'\), "
                                                  r"run has \(\(8, 12\), 'float32'\)"):
            ckpt.restore(wider)


def test_crash_during_save_keeps_previous_checkpoint(adam_state, tmp_path, monkeypatch):
    """Orbax writes into a temporary directory and renames it on commit: kill the commit, check the aftermath."""
    from orbax.checkpoint._src.path import atomicity

    state, _ = adam_state
    with Checkpoints(tmp_path) as ckpt:
        ckpt.save(state)
    before = _snapshot(tmp_path / "7")

    async def crash(self, *args, **kwargs):
        raise KeyboardInterrupt("simulated crash before the commit rename")

    later = state._replace(step=np.asarray(8, np.int32), params=jax.tree.map(lambda a: a + np.float32(1), state.params))
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", crash)
    with pytest.raises(BaseException, match="simulated crash"):
        with Checkpoints(tmp_path) as ckpt:
            ckpt.save(later)
    monkeypatch.undo()
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith("8.")]
    assert leftovers and "orbax-checkpoint-tmp" in leftovers[0]  # the half-written step is a tmp dir

    # A second kind of debris: a copied checkpoint with a truncated file, still under a tmp name.
    shutil.copytree(tmp_path / "7", tmp_path / "9.orbax-checkpoint-tmp-123")
    for root, _, files in os.walk(tmp_path / "9.orbax-checkpoint-tmp-123"):
        for f in files:
            os.truncate(os.path.join(root, f), 3)

    with Checkpoints(tmp_path) as ckpt:
        assert ckpt.steps() == [7]
        restored, _ = ckpt.restore(state)
        _assert_equal_trees(restored, state)
        assert _snapshot(tmp_path / "7") == before
        assert sorted(os.listdir(tmp_path)) == ["7"]  # debris removed when the directory is reopened
        ckpt.save(later)  # and the interrupted step can now be written for real
        assert ckpt.steps() == [7, 8]


def test_corrupt_checkpoint_is_an_error_and_left_alone(adam_state, tmp_path):
    state, _ = adam_state
    with Checkpoints(tmp_path) as ckpt:
        ckpt.save(state._replace(step=np.asarray(1, np.int32)))
        ckpt.save(state)
    data_dir = tmp_path / "7" / "state" / "d"
    for f in os.listdir(data_dir):
        os.truncate(data_dir / f, os.path.getsize(data_dir / f) // 2)
    before = _snapshot(tmp_path)
    with Checkpoints(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="step 7 .* cannot be read"):
            ckpt.restore(state)
        restored, _ = ckpt.restore(state, step=1)  # older checkpoints are still usable
        assert int(restored.step) == 1
    meta = tmp_path / "7" / "meta" / "metadata"
    os.truncate(meta, 10)
    before = _snapshot(tmp_path)
    with Checkpoints(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="cannot be read"):
            ckpt.restore(state)
    assert _snapshot(tmp_path) == before


# -- fit: exact resume and refusals -----------------------------------------------------------------------

FIT = dict(loss=pgd_at(0.1, steps=1), optimizer={"name": "sgd", "learning_rate": 0.05, "schedule": "cosine"},
           epochs=2, batch_size=50, seed=3, progress=False)


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(bn_model, small_ds, tmp_path):
    model = bn_model
    key = jax.random.key(11)
    full, full_hist = fit(model, small_ds, key=key, **FIT)  # 2 epochs x 8 steps, no checkpoints

    def stop_at_11(state, metrics):
        if int(state.step) == 11:
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        fit(model, small_ds, key=key, checkpoint_dir=tmp_path, checkpoint_every=4, max_to_keep=2,
            callback=stop_at_11, **FIT)
    with Checkpoints(tmp_path) as ckpt:
        assert ckpt.steps() == [4, 8]  # step 11 was never saved: resume redoes 9..11
    resumed, hist = fit(model, small_ds, key=key, checkpoint_dir=tmp_path, checkpoint_every=4, max_to_keep=2,
                        resume=True, **FIT)
    assert int(resumed.step) == 16
    _assert_equal_trees(resumed, full)  # params, batch stats, optimizer state, step, key: bit for bit
    assert hist == full_hist
    with Checkpoints(tmp_path) as ckpt:
        assert ckpt.steps() == [12, 16]

    # Resuming a finished run is a no-op that returns the same state.
    again, hist2 = fit(model, small_ds, key=key, checkpoint_dir=tmp_path, checkpoint_every=4, resume=True, **FIT)
    _assert_equal_trees(again.params, full.params)
    assert hist2 == full_hist


def test_fit_history_and_refusals(foreign, small_ds, mnist_small, tmp_path, capsys):
    apply_fn, make_params = foreign
    model = (apply_fn, make_params())
    kw = dict(optimizer={"name": "sgd", "learning_rate": 0.1}, epochs=1, batch_size=100, progress=False,
              key=jax.random.key(0), checkpoint_dir=tmp_path)
    x_test, y_test = mnist_small
    seen, evals = [], []

    def eval_fn(state):
        evals.append(int(state.step))
        return {"test_accuracy": evaluate(apply_fn, state.params, x_test, y_test)}

    state, hist = fit(model, small_ds, **{**kw, "progress": True}, eval_fn=eval_fn,
                      callback=lambda st, m: seen.append(jax.device_get(m)))
    assert "loss=" in capsys.readouterr().err  # the progress bar shows the running loss
    assert evals == [4] and [h["step"] for h in hist] == [4] and [h["epoch"] for h in hist] == [1]
    assert hist[0]["test_accuracy"] == evaluate(apply_fn, state.params, x_test, y_test) > 0.5
    for name in ("loss", "accuracy", "grad_norm"):  # epoch entries are means of the step metrics
        assert hist[0][name] == pytest.approx(np.mean([float(m[name]) for m in seen]), rel=1e-6)
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        fit(model, small_ds, **kw)
    with pytest.raises(CheckpointError, match=r"optimizer.learning_rate: checkpoint has 0.1, run has 0.2"):
        fit(model, small_ds, **{**kw, "optimizer": {"name": "sgd", "learning_rate": 0.2}}, resume=True)
    with pytest.raises(CheckpointError, match="key: checkpoint has"):
        fit(model, small_ds, **{**kw, "key": jax.random.key(1)}, resume=True)
    wide = (lambda p, x: apply_fn(p, x)[:, :5], {"w": jnp.zeros((784, 5)), "b": jnp.zeros(5)})
    with pytest.raises(CheckpointError, match="does not match the model"):
        fit(wide, small_ds, **kw, resume=True)
    assert _snapshot(tmp_path) == before
    data_dir = tmp_path / "4" / "state" / "d"
    for f in os.listdir(data_dir):
        os.truncate(data_dir / f, 1)
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        fit(model, small_ds, **kw, resume=True)
    assert _snapshot(tmp_path) == before  # the corrupt checkpoint is reported, not replaced


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(resume=True), ValueError, "resume=True needs a checkpoint_dir"),
    (dict(epochs=0), ValueError, "epochs must be >= 1"),
    (dict(batch_size=1000), ValueError, "batch_size must be <= the 400 examples"),
    (dict(optimizer="sgd"), TypeError, "optimizer must be a mapping"),
    (dict(optimizer={"name": "sgd", "lr": 0.1}), TypeError, "does not match make_optimizer"),
    (dict(optimizer={"name": "sgd", "learning_rate": -1.0}), ValueError, "learning_rate must be > 0"),
    (dict(loss="trades"), TypeError, "loss must be a jaxrob.train.Loss"),
    (dict(checkpoint_every=0), ValueError, "checkpoint_every must be >= 1"),
    (dict(key=42), TypeError, "key must be a PRNG key"),
    (dict(mesh="data"), TypeError, "mesh must be a jax.sharding.Mesh"),
])
def test_fit_bad_arguments(foreign, small_ds, kwargs, exc, match):
    apply_fn, make_params = foreign
    kw = dict(optimizer={"name": "sgd", "learning_rate": 0.1}, epochs=1, batch_size=100, key=jax.random.key(0),
              progress=False)
    with pytest.raises(exc, match=match):
        fit((apply_fn, make_params()), small_ds, **{**kw, **kwargs})
    with pytest.raises(TypeError, match="train_data must be a jaxrob.data.Dataset"):
        fit((apply_fn, make_params()), (np.zeros((4, 28, 28, 1)), np.zeros(4, int)), **kw)
    with pytest.raises(TypeError, match="model must be a jaxrob.models.Model"):
        fit(apply_fn, small_ds, **kw)
