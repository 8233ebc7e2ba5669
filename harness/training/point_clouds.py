"""3-D toy point clouds of the CS 726 (IIT Bombay, 2023) DDPM homework: `helix` and `sin_5_5`.

Where data is looked for, by name (`root` is the data directory; None skips straight to generating):

1. the homework's own files, `<root>/3d_sin_5_5_{train,test}.npy` / `<root>/helix_3D_{train,test}.npy`
   (float (N, 3), as shipped in ashutoshbsathe/explore-diffusion);
2. the harness layout, `<root>/sin_5_5_3d.npz` / `<root>/helix_3d.npz` (float64 `x` N x 3, `split` 'train'/'test');
3. otherwise a seeded synthetic stand-in from the documented processes (spec 3.2; fits, not the authors' code).

Every split is z-scored per coordinate with the mean/std (ddof=0) of the *train* split, as the homework's eval.py does
(its dataset.py z-scores train with its own statistics, which is the same thing for train).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness.training.data import DataError

POINT_DATASETS = ("helix", "sin_5_5")
SPLITS = ("train", "test")
_ALIASES = {"helix_3d": "helix", "3d_sin_5_5": "sin_5_5", "sin_5_5_3d": "sin_5_5", "sin": "sin_5_5"}
_NPY = {"helix": "helix_3D_{split}.npy", "sin_5_5": "3d_sin_5_5_{split}.npy"}  # the homework's file names
_NPZ = {"helix": "helix_3d.npz", "sin_5_5": "sin_5_5_3d.npz"}  # the harness's own layout


@dataclass(eq=False)
class PointData:
    """One split of a point-cloud dataset, normalised with the train split's statistics.

    `x` is float32 (N, 3) in normalised space; `mean` and `std` (float64, (3,)) are the train statistics used, so
    `denormalise(x)` maps back to the raw coordinates. Treat it as immutable: `content_hash()` is cached.
    """

    name: str
    split: str
    x: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    source: str
    _hash: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.x.dtype != torch.float32 or self.x.ndim != 2 or self.x.shape[1] != 3:
            raise ValueError(f"PointData.x must be float32 (N, 3), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.mean.shape != (3,) or self.std.shape != (3,):
            raise ValueError("PointData.mean and .std must have shape (3,)")

    def __len__(self) -> int:
        return self.x.shape[0]

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw coordinates (..., 3) -> normalised space (computed in float64, returned in `raw`'s dtype)."""
        return ((raw.to(torch.float64) - self.mean) / self.std).to(raw.dtype)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (..., 3) -> raw coordinates (computed in float64, returned in `x`'s dtype)."""
        return (x.to(torch.float64) * self.std + self.mean).to(x.dtype)

    def content_hash(self) -> str:
        """sha256 (hex) of the float32 bytes of `x`: a cache key for reference statistics."""
        if self._hash is None:
            self._hash = hashlib.sha256(np.ascontiguousarray(self.x.cpu().numpy()).data).hexdigest()
        return self._hash


def load_points(
    name: str,
    root: str | os.PathLike[str] | None,
    split: str = "train",
    seed: int = 0,
    n: int | None = None,
) -> PointData:
    """Load one split of `helix` or `sin_5_5` (see the module docstring), normalised with train statistics.

    `seed` only matters when the data is generated. `n` keeps the first n points (after normalising with the
    statistics of the whole train split). Raises DataError for an unknown name or split and for a bad file.
    """
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in POINT_DATASETS:
        close = difflib.get_close_matches(key, POINT_DATASETS + tuple(_ALIASES), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DataError(f"unknown point dataset {name!r} ({hint}known: {', '.join(POINT_DATASETS)})")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for point dataset {key!r}; use 'train' or 'test'")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise DataError(f"option n={n!r} for point dataset {key!r} must be an integer >= 1")
    raw, source = _find_raw(key, Path(root).expanduser() if root is not None else None, split, seed)
    train = raw["train"]
    mean, std = train.mean(axis=0), train.std(axis=0)  # ddof=0, as np.std in the homework's eval.py
    if not (np.all(np.isfinite(std)) and np.all(std > 0)):
        raise DataError(f"point dataset {key!r}: the train split in {source} has a constant coordinate; use good data")
    x = (raw[split] - mean) / std  # float64, then rounded once to float32
    if n is not None:
        x = x[:n]
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return PointData(key, split, x_t, torch.from_numpy(mean), torch.from_numpy(std), source)


def _find_raw(key: str, root: Path | None, split: str, seed: int) -> tuple[dict[str, np.ndarray], str]:
    """Raw float64 train and test arrays, and the source string of `split`."""
    if root is not None:
        npys = {s: root / _NPY[key].format(split=s) for s in SPLITS}
        present = [p for p in npys.values() if p.is_file()]
        if present:
            missing = [p for p in npys.values() if not p.is_file()]
            if missing:
                raise DataError(
                    f"point dataset {key!r}: found {present[0]} but not {missing[0]}; the train and test files are "
                    "needed together (the train statistics normalise both), so add the missing one or remove the other"
                )
            return {s: _read_npy(p, key) for s, p in npys.items()}, str(npys[split])
        npz = root / _NPZ[key]
        if npz.is_file():
            return _read_npz(npz, key), str(npz)
    return GENERATORS[key](seed), f"generated (seed {seed})"


def _check_points(a: np.ndarray, path: Path, key: str, what: str) -> np.ndarray:
    if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0 or a.dtype.kind not in "fiu":
        raise DataError(
            f"point dataset {key!r}: {what} in {path} is {a.dtype} {a.shape}, not a float array of N x 3 points; "
            "replace it with a good copy"
        )
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise DataError(f"point dataset {key!r}: {what} in {path} holds NaN or inf values; replace it with a good copy")
    return a


def _read_npy(path: Path, key: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(
            f"point dataset {key!r}: cannot read {path} as a .npy file ({e}); replace it with a good copy"
        ) from e
    return _check_points(a, path, key, "the array")


def _read_npz(path: Path, key: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x", "split") if k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(
            f"point dataset {key!r}: cannot read {path} as an .npz file ({e}); replace it with a good copy"
        ) from e
    if "x" not in arrays or "split" not in arrays:
        raise DataError(
            f"point dataset {key!r}: {path} is not in the harness layout (needs keys 'x' and 'split'); "
            "replace it with a good copy"
        )
    x, tags = _check_points(arrays["x"], path, key, "key 'x'"), arrays["split"]
    if tags.shape != (len(x),):
        raise DataError(f"point dataset {key!r}: key 'split' in {path} does not have one entry per point; fix the file")
    out = {s: x[tags == s] for s in SPLITS}
    for s in SPLITS:
        if len(out[s]) == 0:
            raise DataError(f"point dataset {key!r}: {path} holds no {s!r} points; both splits are needed")
    return out


# ---- synthetic stand-ins (spec 3.2) ------------------------------------------------------------------------------
# Only uniform draws from PCG64 (Gaussians by Box-Muller), whose streams NumPy keeps stable across versions; the
# float64 result is rounded to float32 once, after normalising, which also absorbs last-ulp libm differences.


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    u1, u2 = 1.0 - rng.random(shape), rng.random(shape)  # u1 in (0, 1], so log(u1) is finite
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def generate_sin_5_5(seed: int = 0, n_draws: int = 30_000, noise: float = 0.01) -> dict[str, np.ndarray]:
    """sin_5_5: (x, y) uniform on [-1, 1]^2 kept inside the unit disk, z = sin(5x)cos(5y)(1 - r) + N(0, noise^2).

    30,000 draws keep about 23,560 points (the real files hold 23,467); the first two thirds are train, the rest test.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    xy = 2.0 * rng.random((n_draws, 2)) - 1.0
    r = np.sqrt((xy**2).sum(axis=1))
    xy, r = xy[r < 1.0], r[r < 1.0]
    z = np.sin(5.0 * xy[:, 0]) * np.cos(5.0 * xy[:, 1]) * (1.0 - r) + noise * _normal(rng, r.shape)
    pts = np.concatenate([xy, z[:, None]], axis=1)  # (M, 3)
    n_train = round(2 * len(pts) / 3)
    return {"train": pts[:n_train], "test": pts[n_train:]}


def generate_helix(
    seed: int = 0, n_train: int = 10_000, n_test: int = 5_000, noise: float = 0.03
) -> dict[str, np.ndarray]:
    """helix: theta ~ U(-28, -14) rad, (cos theta, sin theta, theta / 14) + isotropic N(0, noise^2).

    A refit of the real files (angle unwrapped against z, then regressed; residual std 0.030 in every coordinate):
    z = theta / 14.00 with theta uniform on [-28.0, -14.0], i.e. 2.2 turns over z in [-2, -1]. Spec 3.2's rougher fit
    (13.85 rad per unit z, span 15.9 rad) describes the same cloud once the noise is included.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    n = n_train + n_test
    theta = -28.0 + 14.0 * rng.random(n)
    pts = np.stack([np.cos(theta), np.sin(theta), theta / 14.0], axis=1) + noise * _normal(rng, (n, 3))
    return {"train": pts[:n_train], "test": pts[n_train:]}


GENERATORS = {"helix": generate_helix, "sin_5_5": generate_sin_5_5}
"""Dataset name -> `fn(seed) -> {"train": float64 (N, 3), "test": float64 (M, 3)}` in raw coordinates."""


def load_study_points(name: str, data: dict, split: str = "train", download: bool = False) -> PointData:
    """A point dataset as a study's `data:` section describes it (root; option `n`); `download` is not needed:
    missing files are generated."""
    opts = data.get("options") or {}
    return load_points(name, data.get("root"), split, seed=int(opts.get("seed", 0)), n=opts.get("n"))
