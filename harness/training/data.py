"""Image datasets as in-memory uint8 tensors, and a batcher for training on them.

Every loader returns an `ImageData`: uint8 images (N, C, H, W) and int64 labels, small enough to sit on the device,
so augmentation happens per batch on tensors rather than in DataLoader workers (airbench does the same for CIFAR-10).

Where data is looked for, by name (`root` is the data directory):

- `cifar10`, `cifar100`, `mnist`, `fashion_mnist`, `artbench10`: first `<root>/<name>.npz` in the harness layout
  (uint8 `x` N x H x W [x C] channels-last, int `y`, optional `split` of 'train'/'test', optional `classes`; a file
  without `split` is all train), then torchvision's own layout under `root` (downloaded there when `download=True`).
  Nothing read from disk can run code: .npz files are read with `allow_pickle=False`, the pickled CIFAR-style batches
  with an unpickler that builds only numpy arrays, lists, dicts, strings and numbers (`_read_cifar`), and
  torchvision's MNIST reader parses IDX files (its legacy `processed/*.pt` with `torch.load(weights_only=True)`).
- `digits`: scikit-learn's bundled 8x8 UCI digits (offline). `synthetic`: seeded made-up images, for tests.
- `npz`: any file in the harness layout, given as option `path=` (relative paths are taken under `root`).

Options for every dataset, applied in this order after the split is chosen: `limit` (keep the first n), `channels`
(1 -> 3 by repeating, 3 -> 1 by ITU-R BT.601 luma, as PIL's convert("L")), `pad` (zero pixels added on each side:
pad=2 turns 28x28 into 32x32), `size` (int or (h, w); antialiased bilinear resize on float, rounded back to uint8).
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import inspect
import os
import pickle
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity

from harness.errors import UserError

SPLITS = ("train", "test")
COMMON_OPTIONS = ("limit", "channels", "pad", "size")


class DataError(UserError):
    """A data problem the user can fix (missing or corrupt files, unknown dataset or option); one sentence."""


# The study key that lets torchvision download (schema.DataSpec.download), as the study commands take it.
DOWNLOAD_HINT = "`--set data.download=true` on a machine with internet"


@dataclass(eq=False)
class ImageData:
    """One split of a dataset, held in memory.

    `x` is uint8 (N, C, H, W), `y` int64 (N,), `classes[y]` the class name, `source` the file or folder it came from.
    Treat it as immutable: `content_hash()` is computed once and cached.
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    source: str
    _hash: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"ImageData.x must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise ValueError(
                f"ImageData.y must be int64 (N,) with N = len(x), got {self.y.dtype} {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x.shape[1:]
        return (c, h, w)

    def content_hash(self) -> str:
        """sha256 (hex) of the shape, image bytes and label bytes: a cache key for reference statistics."""
        if self._hash is None:
            h = hashlib.sha256(repr(tuple(self.x.shape)).encode())
            h.update(np.ascontiguousarray(self.x.cpu().numpy()).data)
            h.update(np.ascontiguousarray(self.y.cpu().numpy()).data)
            self._hash = h.hexdigest()
        return self._hash


Loader = Callable[..., ImageData]
DATASETS: dict[str, Loader] = {}
"""Dataset name -> loader `fn(root: Path, split: str, download: bool, **own_options) -> ImageData`."""


def register(name: str) -> Callable[[Loader], Loader]:
    """Add a loader to `DATASETS`; its keyword-only parameters are the dataset's own options."""

    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


def load_dataset(
    name: str, root: str | os.PathLike[str], split: str = "train", download: bool = False, **opts: Any
) -> ImageData:
    """Load one split of dataset `name` from `root` (see the module docstring); options that are None are ignored.

    Raises DataError for an unknown dataset, split or option, and for data that is missing or fails its checks.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        close = difflib.get_close_matches(key, DATASETS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DataError(f"unknown dataset {name!r} ({hint}known: {', '.join(sorted(DATASETS))})")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for dataset {key!r}; use 'train' or 'test'")
    loader = DATASETS[key]
    own = [p.name for p in inspect.signature(loader).parameters.values() if p.kind is p.KEYWORD_ONLY]
    opts = {k: v for k, v in opts.items() if v is not None}
    unknown = sorted(set(opts) - set(COMMON_OPTIONS) - set(own))
    if unknown:
        known = ", ".join(sorted(set(COMMON_OPTIONS) | set(own)))
        raise DataError(f"unknown option {unknown[0]!r} for dataset {key!r} (known options: {known})")
    data = loader(Path(root).expanduser(), split, download, **{k: v for k, v in opts.items() if k in own})
    return _postprocess(data, **{k: opts[k] for k in COMMON_OPTIONS if k in opts})


# ---- common options ----------------------------------------------------------------------------------------------


def _int_option(name: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"option {key}={value!r} for dataset {name!r} must be an integer >= {minimum}")
    return int(value)


def _postprocess(
    data: ImageData, limit: Any = None, channels: Any = None, pad: Any = None, size: Any = None
) -> ImageData:
    x, y = data.x, data.y
    if limit is not None:
        n = _int_option(data.name, "limit", limit, 1)
        x, y = x[:n], y[:n]
    if channels is not None:
        c = _int_option(data.name, "channels", channels, 1)
        if c != x.shape[1]:
            x = _convert_channels(x, c, data.name)
    if pad is not None:
        p = _int_option(data.name, "pad", pad, 0)
        if p:
            x = F.pad(x, (p, p, p, p))  # zeros; (N, C, H + 2p, W + 2p)
    if size is not None:
        hw = size if isinstance(size, (list, tuple)) and len(size) == 2 else (size, size)
        h, w = (_int_option(data.name, "size", s, 1) for s in hw)
        if (h, w) != tuple(x.shape[2:]):
            x = resize_uint8(x, (h, w))
    if x is data.x and y is data.y:
        return data
    return ImageData(data.name, data.split, x.contiguous(), y.contiguous(), list(data.classes), data.source)


def _convert_channels(x: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    if x.shape[1] == 1 and channels == 3:
        return x.repeat(1, 3, 1, 1)
    if x.shape[1] == 3 and channels == 1:
        # ITU-R BT.601 luma, the weights PIL uses for convert("L").
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DataError(f"dataset {name!r} has {x.shape[1]} channels and cannot be converted to channels={channels}")


def resize_uint8(x: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) with antialiased bilinear interpolation on float, then round and clamp to uint8."""
    out = x.new_empty((x.shape[0], x.shape[1], *size))
    for i in range(0, x.shape[0], chunk):  # chunks bound the float copy (50k CIFAR images would be 600 MB)
        part = F.interpolate(x[i : i + chunk].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        out[i : i + chunk] = part.round().clamp(0, 255).to(torch.uint8)
    return out


# ---- files in the harness layout ---------------------------------------------------------------------------------


def _nhwc_to_tensor(x: np.ndarray) -> torch.Tensor:
    x = x[..., None] if x.ndim == 3 else x  # (N, H, W) -> (N, H, W, 1)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (N, C, H, W)


def read_npz(path: Path, name: str, split: str) -> ImageData:
    """Read one split of an .npz in the harness layout (a file without `split` is all train)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x", "y", "split", "classes") if k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(
            f"dataset {name!r}: cannot read {path} as an .npz file ({e}); replace it with a good copy"
        ) from e
    x, y = arrays.get("x"), arrays.get("y")
    if x is None or y is None or x.dtype != np.uint8 or x.ndim not in (3, 4) or y.shape != (x.shape[0],):
        raise DataError(
            f"dataset {name!r}: {path} is not in the harness layout (needs uint8 x of N x H x W [x C] and int y of N)"
        )
    if "split" in arrays:
        keep = arrays["split"] == split
        x, y = x[keep], y[keep]
    elif split != "train":
        raise DataError(f"dataset {name!r}: {path} has no 'split' key, so it is all train; ask for split='train'")
    if len(x) == 0:
        raise DataError(f"dataset {name!r}: {path} holds no {split!r} samples; use the other split or another file")
    n_cls = int(arrays["y"].max()) + 1
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else [str(i) for i in range(n_cls)]
    return ImageData(name, split, _nhwc_to_tensor(x), torch.from_numpy(y.astype(np.int64)), classes, str(path))


@register("npz")
def _load_npz(root: Path, split: str, download: bool, *, path: str | None = None) -> ImageData:
    if path is None:
        raise DataError("dataset 'npz' needs option path=<file.npz> (uint8 x, int y, optional split and classes)")
    file = root / Path(path).expanduser()  # an absolute path replaces root
    if not file.is_file():
        raise DataError(
            f"dataset 'npz' file {file} not found; pass path= an existing .npz (relative paths are under root)"
        )
    return read_npz(file, file.stem, split)


# ---- torchvision datasets ----------------------------------------------------------------------------------------


class ArtBench10(tvd.CIFAR10):
    """ArtBench-10 at 32x32 (Liao et al. 2022, arXiv:2206.11404), shipped in CIFAR-10's python layout.

    URL, file md5s and the meta key `styles` are those of the reference `artbench.py` in liaopeiyuan/artbench (also
    copied into spaghettiSystems/tiny_diffusion's train.py). An earlier revision of that file gave the archive md5
    b116ffdc5e07e162f119149c2ad7403f; the revision that added the URL, and the copies of it, give the one below.
    The per-file md5s, checked after extraction, are the same in both.
    """

    base_folder = "artbench-10-batches-py"
    url = "https://artbench.eecs.berkeley.edu/files/artbench-10-python.tar.gz"
    filename = "artbench-10-python.tar.gz"
    tgz_md5 = "9df1e998ee026aae36ec60ca7b44960e"
    train_list = [
        ["data_batch_1", "c2e02a78dcea81fe6fead5f1540e542f"],
        ["data_batch_2", "1102a4dcf41d4dd63e20c10691193448"],
        ["data_batch_3", "177fc43579af15ecc80eb506953ec26f"],
        ["data_batch_4", "566b2a02ccfbafa026fbb2bcec856ff6"],
        ["data_batch_5", "faa6a572469542010a1c8a2a9a7bf436"],
    ]
    test_list = [["test_batch", "fa44530c8b8158467e00899609c19e52"]]
    meta = {"filename": "meta", "key": "styles", "md5": "5bdcafa7398aa6b75d569baaec5cd4aa"}


def _torchvision_folder(cls: type) -> str:
    if issubclass(cls, tvd.CIFAR10):
        return cls.base_folder + "/"
    return f"{cls.__name__}/raw/"  # MNIST-style: <root>/<ClassName>/raw/<idx files>


# Errors torchvision raises for missing, corrupt or undownloadable data (URLError and socket timeouts are OSErrors).
_TV_ERRORS = (RuntimeError, OSError, EOFError, ValueError, AssertionError, tarfile.TarError, pickle.PickleError)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes (latin-1 only, nothing else)."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError("only latin-1 string encoding is allowed")
    return codecs.encode(text, "latin1")


def _array_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch file may name: numpy's array and scalar reconstruction and dtype, under both
    the NumPy 1 (``numpy.core``) and NumPy 2 (``numpy._core``) module names; all of them only build data."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                       ("_codecs", "encode"): _latin1_encode}  # fmt: skip
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct  # pickle protocol <= 4
        out[(f"{core}.multiarray", "scalar")] = multiarray.scalar  # numpy scalars (e.g. np.int64 labels)
        out[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # pickle protocol 5
    return out


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle names a global that a CIFAR batch file never needs."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, strings and numbers only: any other global (a class, ``os.system``)
    is refused before it is looked up, so a planted pickle cannot run code."""

    _allowed = _array_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _unpickle_batch(path: Path, name: str) -> dict[str, Any]:
    """One pickled CIFAR-style file as a dict with str keys (Python 2 files: latin-1, as torchvision reads them)."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as e:
        raise DataError(
            f"dataset {name!r}: {path} is not a CIFAR batch file (its pickle calls {e}, which could run code), so it "
            "was not loaded; replace it with a good copy"
        ) from None
    except OSError:
        raise
    except Exception as e:  # truncated or malformed pickle: reported as a file that fails the checks
        raise ValueError(f"{path.name} cannot be unpickled ({type(e).__name__})") from e
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name} does not hold a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}


def _read_cifar(cls: type, root: Path, train: bool, download: bool, name: str) -> tuple[np.ndarray, list, list[str]]:
    """torchvision's CIFAR10/CIFAR100 reading (same md5 checks, layout and result: data (N, 32, 32, 3), targets,
    classes) with a restricted unpickler in place of its ``pickle.load``; torchvision still downloads."""
    if download:
        ds = cls.__new__(cls)  # for its download() only: __init__ would pickle.load the batches
        tvd.VisionDataset.__init__(ds, str(root))
        ds.download()
    folder = root / cls.base_folder
    files = cls.train_list if train else cls.test_list
    if not all(check_integrity(str(folder / f), md5) for f, md5 in cls.train_list + cls.test_list):
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
    data, targets = [], []
    for fname, _ in files:
        entry = _unpickle_batch(folder / fname, name)
        x, y = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
        if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3 * 32 * 32):
            raise ValueError(f"{fname} has no uint8 'data' of N x 3072")
        if not isinstance(y, (list, np.ndarray)) or len(y) != len(x):
            raise ValueError(f"{fname} has no labels for its {len(x)} images")
        data.append(x)
        targets.extend(int(t) for t in y)
    meta = folder / cls.meta["filename"]
    if not check_integrity(str(meta), cls.meta["md5"]):
        raise RuntimeError("Dataset metadata file not found or corrupted. You can use download=True to download it")
    names = _unpickle_batch(meta, name).get(cls.meta["key"])
    if not isinstance(names, list):
        raise ValueError(f"{meta.name} has no list {cls.meta['key']!r}")
    classes = [c.decode("latin1") if isinstance(c, bytes) else str(c) for c in names]
    return np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1)), targets, classes


def _read_torchvision(cls: type, root: Path, train: bool, download: bool, name: str) -> tuple[np.ndarray, Any, list]:
    if issubclass(cls, tvd.CIFAR10):
        return _read_cifar(cls, root, train, download, name)
    # MNIST-style: torchvision parses the IDX files itself (no pickle); its legacy processed/*.pt files, read
    # first when present, go through torch.load(weights_only=True).
    ds = cls(str(root), train=train, download=download)
    return np.asarray(ds.data), ds.targets, [str(c) for c in ds.classes]


def _load_torchvision(name: str, cls: type, root: Path, split: str, download: bool) -> ImageData:
    npz = root / f"{name}.npz"
    if npz.is_file():
        return read_npz(npz, name, split)
    folder = _torchvision_folder(cls)
    try:
        data, targets, classes = _read_torchvision(cls, root, split == "train", download, name)
    except _TV_ERRORS as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if download:
            raise DataError(
                f"dataset {name!r} could not be downloaded into {root} ({reason}); check the network, or put "
                f"{name}.npz or {folder} there by hand"
            ) from e
        if (root / folder).is_dir():
            raise DataError(
                f"dataset {name!r} under {root / folder} is incomplete or fails torchvision's checks ({reason}); "
                f"replace it with a good copy, or delete it and rerun with {DOWNLOAD_HINT}"
            ) from e
        raise DataError(
            f"dataset {name!r} not found under {root} (looked for {name}.npz and {folder}); put a copy there or "
            f"rerun with {DOWNLOAD_HINT}"
        ) from None
    if cls is tvd.MNIST:
        classes = [c.split(" - ")[0] for c in classes]  # '0 - zero' -> '0', as in the harness's mnist.npz
    y = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    return ImageData(name, split, _nhwc_to_tensor(data), y, classes, str(root / folder))


def _torchvision_loader(name: str, cls: type) -> Loader:
    def load(root: Path, split: str, download: bool) -> ImageData:
        return _load_torchvision(name, cls, root, split, download)

    load.__doc__ = f"{name}: <root>/{name}.npz, else torchvision {cls.__name__} under <root>/{_torchvision_folder(cls)}"
    return load


_TORCHVISION = {
    "cifar10": tvd.CIFAR10,
    "cifar100": tvd.CIFAR100,
    "mnist": tvd.MNIST,
    "fashion_mnist": tvd.FashionMNIST,
    "artbench10": ArtBench10,
}
for _name, _cls in _TORCHVISION.items():
    register(_name)(_torchvision_loader(_name, _cls))


# ---- offline datasets --------------------------------------------------------------------------------------------

DIGITS_TRAIN = 1500  # load_digits() order: the first 1500 images are train, the other 297 test


@register("digits")
def _load_digits(root: Path, split: str, download: bool) -> ImageData:
    """scikit-learn's 8x8 UCI digits (values 0..16 -> uint8 as floor(v * 255 / 16 + 0.5)); use size= to upsample."""
    import sklearn
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.floor(d.images * (255 / 16) + 0.5).astype(np.uint8)
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    y = torch.from_numpy(d.target[part].astype(np.int64))
    source = f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})"
    return ImageData("digits", split, _nhwc_to_tensor(x[part]), y, [str(i) for i in range(10)], source)


@register("synthetic")
def _load_synthetic(root: Path, split: str, download: bool, *, n=256, size=16, channels=3, num_classes=4, seed=0):
    """Seeded images a model can learn: a coloured blob whose position and colour, and stripes whose orientation,
    depend on the class; plus per-sample jitter and uniform noise. Train and test are independent draws."""
    n, size = _int_option("synthetic", "n", n, 1), _int_option("synthetic", "size", size, 4)
    k, seed = _int_option("synthetic", "num_classes", num_classes, 1), _int_option("synthetic", "seed", seed, 0)
    if _int_option("synthetic", "channels", channels, 1) not in (1, 3):
        raise DataError(f"option channels={channels!r} for dataset 'synthetic' must be 1 or 3")
    # Only uniform draws from PCG64: their streams are stable across NumPy versions.
    rng = np.random.Generator(np.random.PCG64([seed, SPLITS.index(split)]))
    y = rng.permutation(np.arange(n) % k)
    angle = 2 * np.pi * y / k
    cx = 0.5 + 0.25 * np.cos(angle) + 0.1 * (rng.random(n) - 0.5)
    cy = 0.5 + 0.25 * np.sin(angle) + 0.1 * (rng.random(n) - 0.5)
    grid = np.linspace(0.0, 1.0, size)
    gy, gx = grid[None, :, None], grid[None, None, :]  # (1, S, 1), (1, 1, S)
    blob = np.exp(-((gx - cx[:, None, None]) ** 2 + (gy - cy[:, None, None]) ** 2) / (2 * 0.12**2))  # (n, S, S)
    colour = 0.5 + 0.5 * np.cos(2 * np.pi * (y[:, None] / k + np.array([0.0, 1 / 3, 2 / 3])))  # (n, 3): hue wheel
    theta = (np.pi * y / k)[:, None, None]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * (gx * np.cos(theta) + gy * np.sin(theta)))  # (n, S, S)
    img = 0.1 + 0.6 * blob[..., None] * colour[:, None, None, :] + 0.15 * stripes[..., None]  # (n, S, S, 3)
    img = img + 0.15 * rng.random(img.shape)
    if channels == 1:
        img = img.mean(-1)
    x = np.floor(np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    source = f"synthetic(seed={seed}, n={n}, size={size}, channels={channels}, num_classes={k})"
    classes = [f"class{i}" for i in range(k)]
    return ImageData("synthetic", split, _nhwc_to_tensor(x), torch.from_numpy(y.astype(np.int64)), classes, source)


# ---- batching ----------------------------------------------------------------------------------------------------


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8, rounded and clamped; inverts `to_unit` exactly."""
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def shard_slice(global_batch: int, rank: int, world_size: int) -> slice:
    """The contiguous part of a global batch that ``rank`` of ``world_size`` data-parallel workers trains on."""
    per = global_batch // world_size
    return slice(rank * per, (rank + 1) * per)


class TensorBatches:
    """Endless shuffled batches from an `ImageData` kept as uint8 on `device`; each batch is converted on the fly.

    Yields `(x float32 (B, C, H, W) in [-1, 1], y int64 (B,))` (with `raw=True`, x as stored: uint8). Every epoch
    is a fresh permutation drawn from `generator`, so each sample appears once per epoch (with `drop_last`, the last
    N % B of each permutation are skipped). `state_dict()` / `load_state_dict()` resume the exact batch sequence,
    even if `generator` is shared.

    With ``shard=(rank, world_size)``, ``batch_size`` is the global batch: every rank draws the same global batch
    (same generator seed) and yields only its contiguous slice of ``batch_size // world_size`` samples, so N
    data-parallel workers together train on exactly the batches one worker would (the global batch must divide).
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
        drop_last: bool = True,
        raw: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        n = len(data)
        rank, world = shard
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise DataError(f"global batch {batch_size} cannot be split evenly across {world} workers")
        self.shard = (rank, world)
        if batch_size < 1 or n == 0 or (drop_last and batch_size > n):
            raise DataError(f"batch size {batch_size} does not fit dataset {data.name!r} ({n} {data.split} samples)")
        self.x = data.x.to(device)
        self.y = data.y.to(device)
        self.batch_size = batch_size
        self.generator = generator
        self.drop_last = drop_last
        self.raw = raw  # yield the stored uint8 images (for augmentations that work on uint8) instead of [-1, 1]
        self.epoch = 0  # epoch of the next batch (0-based)
        self.position = 0  # where the next batch starts in this epoch's permutation
        self._perm: torch.Tensor | None = None
        self._epoch_start_state: torch.Tensor | None = None  # generator state before this epoch's permutation

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _draw_permutation(self) -> None:
        self._epoch_start_state = self.generator.get_state()
        perm = torch.randperm(len(self.y), generator=self.generator, device=self.generator.device)
        self._perm = perm.to(self.x.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.batches_per_epoch * self.batch_size if self.drop_last else len(self.y)
        if self._perm is None or self.position >= end:
            if self._perm is not None:
                self.epoch += 1
            self.position = 0
            self._draw_permutation()
        assert self._perm is not None
        idx = self._perm[self.position : min(self.position + self.batch_size, end)]
        self.position += len(idx)
        if self.shard[1] > 1:
            idx = idx[shard_slice(len(idx), *self.shard)]
        return (self.x[idx] if self.raw else to_unit(self.x[idx])), self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        """Epoch, position and generator states; tensors and ints only, so `torch.load(weights_only=True)` works."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "num_samples": len(self.y),
            "batch_size": self.batch_size,
            "epoch_start_state": self._epoch_start_state,
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`: the next batch is the one that would have followed when it was taken."""
        if (state["num_samples"], state["batch_size"]) != (len(self.y), self.batch_size):
            raise DataError(
                f"cannot resume batches: saved for {state['num_samples']} samples in batches of {state['batch_size']}, "
                f"but now {len(self.y)} samples in batches of {self.batch_size}; resume with the same data and config"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if state["epoch_start_state"] is None:
            self._perm = self._epoch_start_state = None
        else:
            self.generator.set_state(state["epoch_start_state"])
            self._draw_permutation()  # the same permutation as before the save
        self.generator.set_state(state["generator_state"])


# Shapes of the named datasets as stored: (channels, height, width, classes). Lets a study resolve model configs
# (and their parameter counts) without reading any data.
_KNOWN_SHAPES = {
    "cifar10": (3, 32, 32, 10),
    "cifar100": (3, 32, 32, 100),
    "mnist": (1, 28, 28, 10),
    "fashion_mnist": (1, 28, 28, 10),
    "artbench10": (3, 32, 32, 10),
    "digits": (1, 8, 8, 10),
}


def image_meta(name: str, data: dict[str, Any]) -> tuple[int, int, int, int]:
    """(C, H, W, num_classes) of dataset ``name`` after the study's data options (channels, pad, size).

    Named datasets come from a table; `synthetic` and `npz` are loaded (they are small or local) to find out.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in _KNOWN_SHAPES:
        probe = load_study_data(name, data, "train")
        (c, h, w), k = probe.shape, probe.num_classes
        return c, h, w, k
    c, h, w, k = _KNOWN_SHAPES[key]
    if data.get("channels"):
        c = int(data["channels"])
    if data.get("pad"):
        h, w = h + 2 * int(data["pad"]), w + 2 * int(data["pad"])
    size = data.get("size")
    if size:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
    return c, h, w, k


def load_study_data(name: str, data: dict[str, Any], split: str = "train", download: bool = False) -> ImageData:
    """Load a dataset as a study's `data:` section describes it (root, limit, channels, pad, size, own options).

    `limit` applies to the training split only; the dataset's own options win over the common ones of the same
    name (the synthetic set's `size` is the size it is drawn at).
    """
    opts = {k: data.get(k) for k in COMMON_OPTIONS if data.get(k) is not None}
    if split != "train":
        opts.pop("limit", None)
    opts.update(data.get("options") or {})
    return load_dataset(name, data.get("root", "."), split, download=download, **opts)
