"""Helpers shared by the benchmark scripts: environment facts, timing, data, output."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def device_kind() -> str:
    """``jax.devices()[0].device_kind``, e.g. ``"cpu"`` or ``"NVIDIA H100 80GB HBM3"``."""
    return jax.devices()[0].device_kind


def device_slug() -> str:
    """A file-name-safe form of the device kind (``cpu`` is suffixed with the core count)."""
    kind = device_kind()
    slug = re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "device"
    return f"{slug}{cores()}" if jax.devices()[0].platform == "cpu" else slug


def git_revision() -> str | None:
    """``HEAD``'s commit, with ``+dirty`` if tracked files under ``jaxrob/`` or ``benchmarks/`` differ from it."""
    import subprocess
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "jaxrob", "benchmarks"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def environment(torch_module: Any | None = None) -> dict[str, Any]:
    """Versions and hardware recorded beside every result."""
    env = {
        "device_kind": device_kind(),
        "platform": jax.devices()[0].platform,
        "num_devices": jax.device_count(),
        "cores": cores(),
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "numpy": np.__version__,
        "jaxrob_git": git_revision(),
        "load_average_at_start": load_average(),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    }
    try:
        import flax
        env["flax"] = flax.__version__
    except ImportError:
        pass
    if torch_module is not None:
        env["torch"] = torch_module.__version__
        env["torch_threads"] = torch_module.get_num_threads()
        env["torch_cuda"] = bool(torch_module.cuda.is_available())
        if env["torch_cuda"]:
            env["torch_cudnn_allow_tf32"] = bool(torch_module.backends.cudnn.allow_tf32)
            env["torch_matmul_allow_tf32"] = bool(torch_module.backends.cuda.matmul.allow_tf32)
        try:
            import torchattacks
            env["torchattacks"] = torchattacks.__version__
        except ImportError:
            pass
    return env


def median_times(fns: Sequence[Callable[[], Any]], *, repeats: int, warmup: int = 1
                 ) -> list[tuple[float, list[float]]]:
    """Median wall time of each ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    The functions are run in turn (``f0, f1, f0, f1, ...``), so a load that
    comes and goes on a shared machine hits all of them alike. Each ``fn`` must
    itself wait for its result (``block_until_ready`` / ``torch.cuda.synchronize``).

    Returns:
      ``[(median_seconds, all_seconds), ...]``, one per function.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [(statistics.median(t), t) for t in times]


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (other processes competing for the cores), if known."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def mnist10k(split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(x float32 NHWC in [0, 1], y int32, source)`` of the embedded MNIST-10k split.

    Uses ``jaxrob.data.load`` when it imports; otherwise reads the bundled
    ``.npz`` and takes a fixed stratified 80/20 split of its own (recorded as
    the source, since it is not jaxrob's split).
    """
    try:
        from jaxrob import data
        ds = data.load("mnist10k", split=split)
        x, y = data.as_arrays(ds) if hasattr(data, "as_arrays") else (ds.images, ds.labels)
        x = np.asarray(x)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        return x, np.asarray(y, np.int32), f"jaxrob.data.load('mnist10k', split={split!r})"
    except ImportError:
        raw = np.load(REPO_ROOT / "jaxrob" / "data" / "mnist10k.npz")
        images, labels = raw["images"], raw["labels"].astype(np.int32)
        rng = np.random.default_rng(0)
        test = np.zeros(len(labels), bool)
        for c in range(10):
            idx = np.flatnonzero(labels == c)
            test[rng.permutation(idx)[: len(idx) // 5]] = True
        keep = test if split == "test" else ~test
        x = images[keep].astype(np.float32)[..., None] / 255.0
        return x, labels[keep], f"mnist10k.npz, own stratified 80/20 split ({split})"


def mnist_as_cifar(x: np.ndarray) -> np.ndarray:
    """``(N, 28, 28, 1)`` digits -> ``(N, 32, 32, 3)``: 2-pixel zero border, grey replicated to RGB."""
    x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    return np.ascontiguousarray(np.repeat(x, 3, axis=-1))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Writes ``obj`` as JSON atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def default_out(name: str) -> Path:
    """``benchmarks/results/<device>-<name>.json``."""
    return RESULTS_DIR / f"{device_slug()}-{name}.json"


def import_torch() -> tuple[Any, Any] | tuple[None, None]:
    """``(torch, torchattacks)`` if both import, else ``(None, None)`` (the torch side is skipped)."""
    try:
        import torch
        import torchattacks
    except ImportError as e:
        print(f"[torch side skipped: {e}]", file=sys.stderr)
        return None, None
    return torch, torchattacks
