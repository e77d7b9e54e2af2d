"""jaxrob.train (being written)."""
