"""Flax NNX models exposed as pure functions (see :mod:`jaxrob.models._base`)."""

from jaxrob.models._base import Model, count_params, from_nnx

__all__ = ["Model", "count_params", "from_nnx"]
