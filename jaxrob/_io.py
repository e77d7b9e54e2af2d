"""Atomic file writes: a result file is either the old version or the new one, never half."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Writes through ``write(fileobj)`` into a temporary file beside ``path``, then renames it.

    The rename is atomic on POSIX, so readers (and a crash part-way) see either the
    previous file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically writes ``text`` to ``path``."""
    return atomic_write(path, lambda f: f.write(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically writes ``obj`` as indented JSON to ``path``."""
    return atomic_write(path, lambda f: (json.dump(obj, f, indent=2, sort_keys=False, default=_jsonable), f.write("\n")))


def save_figure(path: str | os.PathLike, fig: Any, **kwargs: Any) -> Path:
    """Atomically saves a matplotlib figure as PNG."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", **kwargs), binary=True)


def _jsonable(x: Any) -> Any:
    import numpy as np
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"object of type {type(x).__name__} is not JSON serialisable")
