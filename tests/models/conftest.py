"""Shared helpers for the jaxrob.models tests."""

import functools

import pytest

from jaxrob import models


@functools.cache
def _abstract(name, **kwargs):
    return models.create_abstract(name, **kwargs)


@pytest.fixture(scope="session")
def abstract():
    """``models.create_abstract`` memoised across the folder: building big models is the slow part."""
    return _abstract
