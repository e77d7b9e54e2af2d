"""Data parallelism over 4 fake CPU devices gives the single-device result.

``--xla_force_host_platform_device_count`` must be set before JAX initialises,
so the check runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from jaxrob import data, models, train

    assert jax.device_count() == 4, jax.devices()

    class TinyBN(nnx.Module):
        def __init__(self, *, rngs):
            self.fc1 = nnx.Linear(784, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
            self.fc2 = nnx.Linear(8, 10, rngs=rngs)

        def __call__(self, x, *, train, key=None):
            h = self.bn(self.fc1(x.reshape(x.shape[0], -1)), use_running_average=not train)
            return self.fc2(jax.nn.relu(h))

    model = models.from_nnx(TinyBN(rngs=nnx.Rngs(0)), name="tiny_bn", input_shape=(28, 28, 1), num_classes=10)
    full = data.load("mnist10k", split="train")
    x, y = data.as_arrays(full, limit=128)
    opt = train.make_optimizer("sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)

    def run(mesh):
        state = train.TrainState.create(model.params, opt, key=jax.random.key(0),
                                        batch_stats=model.variables["batch_stats"])
        if mesh is not None:
            state = train.replicate(state, mesh)
        step = train.make_train_step(model.apply_fn, model.train_apply, opt, train.cross_entropy(), mesh=mesh)
        for i in range(4):
            xb, yb = x[32 * i:32 * (i + 1)], y[32 * i:32 * (i + 1)]
            key = jax.random.fold_in(state.rng, i)
            if mesh is not None:
                xb, yb = train.shard_batch((xb, yb), mesh)
                assert xb.sharding.spec == P("data") and len(xb.addressable_shards) == 4
                assert xb.addressable_shards[0].data.shape == (8, 28, 28, 1)
                key = train.replicate(key, mesh)
            state, metrics = step(state, xb, yb, key)
        return state, metrics

    s1, m1 = run(None)
    mesh = train.make_mesh()
    s4, m4 = run(mesh)
    for leaf in jax.tree.leaves(s4):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    jax.tree.map(close, s4.params, s1.params)
    jax.tree.map(close, s4.batch_stats, s1.batch_stats)  # BN statistics over the global batch
    jax.tree.map(close, s4.opt_state, s1.opt_state)
    jax.tree.map(close, m4, m1)
    assert not np.allclose(s1.params["fc1"]["kernel"], model.params["fc1"]["kernel"])  # it did train

    # fit() with a mesh (adversarial loss, attack inside the sharded step) equals fit() without.
    ds = data.from_arrays(full.images[:96], full.labels[:96], num_classes=10)
    kw = dict(loss=train.pgd_at(0.1, steps=2), optimizer={"name": "sgd", "learning_rate": 0.05},
              epochs=2, batch_size=32, key=jax.random.key(1), progress=False)
    f1, h1 = train.fit(model, ds, **kw)
    f4, h4 = train.fit(model, ds, mesh=mesh, **kw)
    jax.tree.map(close, f4.params, f1.params)
    jax.tree.map(close, f4.batch_stats, f1.batch_stats)
    assert [h["step"] for h in h4] == [3, 6]
    np.testing.assert_allclose([h["loss"] for h in h4], [h["loss"] for h in h1], rtol=1e-5)
    print("SHARDING-OK")
''')


@pytest.mark.slow
def test_four_devices_match_one():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "SHARDING-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
