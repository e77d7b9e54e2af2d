"""jaxrob.attacks (being written)."""
