"""Hardware cost models as differentiable ``jnp`` functions (issue #7, in progress).

Built so far: :mod:`jaxrob.hw._workload` (the :class:`Workload` pytree the cost models
read).  Workload extraction from a model's jaxpr, systolic and multi-pod arrays,
in-memory computing, crossbar ADCs, sparse accelerators and SNN energy follow.
"""
