"""jaxrob: robust, efficient and hardware-aware deep networks in JAX.

The one contract: a model is ``apply_fn(variables, x) -> logits``, a pure function
over a pytree, so every attack, training loss and transform works on any JAX model.
"""

__version__ = "0.1.0"
