"""jaxrob.data (being written)."""
