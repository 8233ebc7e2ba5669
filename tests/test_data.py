"""Dataset layer: fake files in the real on-disk layouts, read through the real torchvision code paths.

torchvision's CIFAR-style classes check every file against the md5 table on the class (`check_integrity` compares
`hashlib.md5` of the file with the table's entry; an entry of None would skip the check). The fake files here cannot
have the real md5s, so `_trust` points the class's table at the fake files' own md5s: torchvision's integrity check
still runs, and a file that is changed afterwards (or left with the real table) fails it, as `test_cifar_corrupt`
shows. MNIST-style classes only check that the raw IDX files exist, so they need no patching.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist
from PIL import Image
from torchvision import datasets as tvd

from harness.errors import UserError
from harness.training.data import (
    DATASETS,
    ArtBench10,
    DataError,
    ImageData,
    TensorBatches,
    load_dataset,
    to_uint8,
    to_unit,
)

CIFAR_LIKE = [
    ("cifar10", tvd.CIFAR10, "labels", 10),
    ("cifar100", tvd.CIFAR100, "fine_labels", 100),
    ("artbench10", ArtBench10, "labels", 10),
]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar_layout(root: Path, cls: type, label_key: str, num_classes: int, n: int = 3) -> dict:
    """Pickled batches as in the real archives: data (n, 3072) uint8 rows of R, G, B planes, plus labels and meta."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for fname, _ in cls.train_list + cls.test_list:
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, num_classes, n).tolist()
        (folder / fname).write_bytes(pickle.dumps({"data": x.reshape(n, -1), label_key: y, "batch_label": fname}))
        out[fname] = (x, y)
    names = [f"class_{i}" for i in range(num_classes)]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: names}))
    out["classes"] = names
    return out


def _trust(monkeypatch: pytest.MonkeyPatch, root: Path, cls: type) -> None:
    folder = root / cls.base_folder
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(folder / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


def write_idx(path: Path, arr: np.ndarray) -> None:
    """IDX (LeCun) file: magic 0x0000 08 <ndim> (08 = uint8), big-endian int32 dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">I", 0x800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def write_npz(path: Path, split: bool = True, classes: bool = True, rgb: bool = True) -> dict:
    rng = np.random.default_rng(1)
    shape = (7, 6, 5, 3) if rgb else (7, 6, 5)
    arrays = {"x": rng.integers(0, 256, shape, dtype=np.uint8), "y": np.array([0, 1, 2, 0, 1, 2, 0], dtype=np.int64)}
    if split:
        arrays["split"] = np.array(["train"] * 4 + ["test"] * 3)
    if classes:
        arrays["classes"] = np.array(["a", "b", "c"])
    np.savez(path, **arrays)
    return arrays


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((x[..., None] if x.ndim == 3 else x).transpose(0, 3, 1, 2).copy())


# ---- real layouts ----


@pytest.mark.parametrize("name, cls, label_key, k", CIFAR_LIKE)
def test_cifar_layouts_round_trip(tmp_path, monkeypatch, name, cls, label_key, k):
    files = write_cifar_layout(tmp_path, cls, label_key, k)
    _trust(monkeypatch, tmp_path, cls)
    train = load_dataset(name, tmp_path)
    test = load_dataset(name, tmp_path, split="test")
    want_x = np.concatenate([files[f][0] for f, _ in cls.train_list])
    want_y = sum((files[f][1] for f, _ in cls.train_list), [])
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert torch.equal(train.x, torch.from_numpy(want_x)) and train.y.tolist() == want_y
    assert torch.equal(test.x, torch.from_numpy(files[cls.test_list[0][0]][0]))
    assert (train.name, train.split, test.split, train.shape) == (name, "train", "test", (3, 32, 32))
    assert train.classes == files["classes"] and train.num_classes == k
    assert train.source == str(tmp_path / cls.base_folder / "")
    assert load_dataset(name, tmp_path, download=True).content_hash() == train.content_hash()  # present: no fetch


def test_artbench_constants():
    assert ArtBench10.base_folder == "artbench-10-batches-py" and ArtBench10.meta["key"] == "styles"
    assert ArtBench10.url.endswith("/artbench-10-python.tar.gz") and len(ArtBench10.train_list) == 5


def test_cifar_corrupt(tmp_path):
    write_cifar_layout(tmp_path, tvd.CIFAR10, "labels", 10)  # real md5 table: the fake files fail it
    with pytest.raises(DataError, match="incomplete or fails") as e:
        load_dataset("cifar10", tmp_path)
    assert "cifar10" in str(e.value) and str(tmp_path / "cifar-10-batches-py") in str(e.value)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_layout(tmp_path, name, folder):
    rng = np.random.default_rng(2)
    raw = tmp_path / folder / "raw"
    data = {}
    for part, n in [("train", 5), ("t10k", 3)]:
        x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)
        write_idx(raw / f"{part}-images-idx3-ubyte", x)
        write_idx(raw / f"{part}-labels-idx1-ubyte", y)
        data[part] = (x, y)
    train, test = load_dataset(name, tmp_path), load_dataset(name, tmp_path, split="test")
    assert train.shape == (1, 28, 28) and len(train) == 5 and len(test) == 3
    assert torch.equal(train.x[:, 0], torch.from_numpy(data["train"][0]))
    assert test.y.tolist() == data["t10k"][1].tolist() and test.y.dtype == torch.int64
    assert train.num_classes == 10
    if name == "mnist":
        assert train.classes == [str(i) for i in range(10)]


def test_local_npz_comes_first(tmp_path):
    arrays = write_npz(tmp_path / "cifar10.npz")
    train, test = load_dataset("cifar10", tmp_path), load_dataset("cifar10", tmp_path, split="test")
    assert torch.equal(train.x, _nchw(arrays["x"][:4])) and torch.equal(test.x, _nchw(arrays["x"][4:]))
    assert train.y.tolist() == [0, 1, 2, 0] and test.classes == ["a", "b", "c"]
    assert train.source == str(tmp_path / "cifar10.npz")


def test_npz_dataset(tmp_path):
    arrays = write_npz(tmp_path / "plain.npz", split=False, classes=False, rgb=False)
    d = load_dataset("npz", tmp_path, path="plain.npz")
    assert d.name == "plain" and d.shape == (1, 6, 5) and len(d) == 7
    assert torch.equal(d.x, _nchw(arrays["x"])) and d.classes == ["0", "1", "2"]
    assert torch.equal(load_dataset("npz", "/elsewhere", path=str(tmp_path / "plain.npz")).x, d.x)  # absolute path
    with pytest.raises(DataError, match="no 'split' key"):
        load_dataset("npz", tmp_path, split="test", path="plain.npz")
    with pytest.raises(DataError, match="needs option path"):
        load_dataset("npz", tmp_path)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        load_dataset("npz", tmp_path, path="bad.npz")


# ---- errors ----


@pytest.mark.parametrize(
    "name, looked_for",
    [("cifar10", "cifar-10-batches-py/"), ("mnist", "MNIST/raw/"), ("artbench10", "artbench-10-batches-py/")],
)
def test_missing_data_error(tmp_path, name, looked_for):
    with pytest.raises(DataError) as e:
        load_dataset(name, tmp_path / "data")
    msg = str(e.value)
    assert f"'{name}'" in msg and str(tmp_path / "data") in msg and looked_for in msg
    assert "`--set data.download=true`" in msg
    assert isinstance(e.value, UserError)
    with pytest.raises(DataError, match=str(tmp_path / "data" / "nope.npz")):
        load_dataset("npz", tmp_path / "data", path="nope.npz")


def test_download_failure_is_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    for name in ("cifar10", "mnist"):
        with pytest.raises(DataError, match=f"'{name}' could not be downloaded into {tmp_path}"):
            load_dataset(name, tmp_path, download=True)


def test_unknown_names_and_options(tmp_path):
    with pytest.raises(DataError, match="did you mean cifar10"):
        load_dataset("cifar1O", tmp_path)
    with pytest.raises(DataError, match="unknown option 'colour'.*known options: channels, limit, pad, size"):
        load_dataset("digits", tmp_path, colour=1)
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("digits", tmp_path, split="val")
    with pytest.raises(DataError, match="limit=0"):
        load_dataset("digits", tmp_path, limit=0)
    with pytest.raises(DataError, match="channels=2"):
        load_dataset("digits", tmp_path, channels=2)
    names = {"cifar10", "cifar100", "mnist", "fashion_mnist", "artbench10", "digits", "synthetic", "npz"}
    assert set(DATASETS) == names


# ---- common options ----


def test_limit_channels_pad_size(tmp_path):
    arrays = write_npz(tmp_path / "cifar10.npz")
    full = load_dataset("cifar10", tmp_path)
    assert torch.equal(load_dataset("cifar10", tmp_path, limit=2).x, full.x[:2])
    assert torch.equal(load_dataset("cifar10", tmp_path, limit=2, split="test").x, _nchw(arrays["x"][4:6]))
    assert len(load_dataset("cifar10", tmp_path, limit=100)) == 4  # a limit past the end keeps everything
    grey = load_dataset("cifar10", tmp_path, channels=1)
    pil = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in arrays["x"][:4]])  # BT.601 in PIL
    assert grey.shape == (1, 6, 5) and (grey.x[:, 0].int() - torch.from_numpy(pil).int()).abs().max() <= 1
    assert torch.equal(load_dataset("cifar10", tmp_path, channels=3).x, full.x)  # already 3 channels: unchanged
    padded = load_dataset("cifar10", tmp_path, pad=2)
    assert padded.shape == (3, 10, 9) and torch.equal(padded.x[:, :, 2:-2, 2:-2], full.x)
    assert padded.x.sum() == full.x.sum()  # the border is zeros
    assert load_dataset("cifar10", tmp_path, size=12).shape == (3, 12, 12)
    assert load_dataset("cifar10", tmp_path, size=(3, 4)).shape == (3, 3, 4)


def test_grey_to_rgb_and_resize_values(tmp_path):
    x = np.full((2, 8, 8), 77, dtype=np.uint8)
    x[1] = np.arange(64).reshape(8, 8)
    np.savez(tmp_path / "g.npz", x=x, y=np.array([0, 1]))
    rgb = load_dataset("npz", tmp_path, path="g.npz", channels=3)
    assert rgb.shape == (3, 8, 8) and all(torch.equal(rgb.x[:, c], rgb.x[:, 0]) for c in range(3))
    small = load_dataset("npz", tmp_path, path="g.npz", size=4, pad=0)
    assert small.x.dtype == torch.uint8 and bool((small.x[0] == 77).all())  # a flat image stays flat
    big = load_dataset("npz", tmp_path, path="g.npz", size=32)
    assert bool((big.x[0] == 77).all()) and int(big.x[1].min()) >= 0 and int(big.x[1].max()) <= 63


# ---- offline datasets ----


def test_digits_offline(tmp_path):
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", tmp_path / "absent"), load_dataset("digits", tmp_path, split="test")
    assert (len(train), len(test), train.shape, train.num_classes) == (1500, 297, (1, 8, 8), 10)
    raw = load_digits()
    assert torch.equal(train.x[:, 0], torch.from_numpy(np.floor(raw.images[:1500] * 255 / 16 + 0.5).astype(np.uint8)))
    assert int(train.x.max()) == 255 and torch.equal(test.y, torch.from_numpy(raw.target[1500:]).long())
    assert load_dataset("digits", tmp_path, size=32, channels=3, limit=10).shape == (3, 32, 32)


def test_synthetic_deterministic_and_learnable(tmp_path):
    a = load_dataset("synthetic", tmp_path, n=200, size=12, num_classes=4, seed=3)
    b = load_dataset("synthetic", tmp_path, n=200, size=12, num_classes=4, seed=3)
    assert a.x.numpy().tobytes() == b.x.numpy().tobytes() and torch.equal(a.y, b.y)
    assert a.content_hash() != load_dataset("synthetic", tmp_path, n=200, size=12, num_classes=4, seed=4).content_hash()
    test = load_dataset("synthetic", tmp_path, split="test", n=200, size=12, num_classes=4, seed=3)
    assert not torch.equal(test.x, a.x) and a.shape == (3, 12, 12) and a.num_classes == 4
    assert load_dataset("synthetic", tmp_path, channels=1, n=8).shape == (1, 16, 16)
    # nearest class mean, fitted on train, classifies the test draw: the classes differ and can be learned
    means = torch.stack([a.x[a.y == c].float().mean(0) for c in range(4)])  # (K, C, H, W)
    dist = ((test.x.float()[:, None] - means[None]) ** 2).flatten(2).sum(-1)  # (N, K)
    assert (dist.argmin(1) == test.y).float().mean() > 0.9


# ---- hashing ----


def test_content_hash(tmp_path):
    d = load_dataset("synthetic", tmp_path, n=16, size=8)
    h = d.content_hash()
    assert len(h) == 64 and h == d.content_hash() == load_dataset("synthetic", tmp_path, n=16, size=8).content_hash()
    x = d.x.clone()
    x[3, 1, 4, 5] ^= 1
    assert ImageData(d.name, d.split, x, d.y, d.classes, d.source).content_hash() != h
    y = d.y.clone()
    y[0] = (y[0] + 1) % 4
    assert ImageData(d.name, d.split, d.x, y, d.classes, d.source).content_hash() != h
    same_bytes = d.x.reshape(16, 3, 4, 16)
    assert ImageData(d.name, d.split, same_bytes, d.y, d.classes, d.source).content_hash() != h
    with pytest.raises(ValueError):
        ImageData("bad", "train", d.x.float(), d.y, d.classes, "")


# ---- batching ----


def _indexed(n: int) -> ImageData:
    """Labels are the sample indices, so batches say which samples they hold."""
    x = torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return ImageData("idx", "train", x, torch.arange(n), [str(i) for i in range(n)], "test")


def test_unit_round_trip():
    v = torch.arange(256, dtype=torch.uint8)
    u = to_unit(v)
    assert u.dtype == torch.float32 and u.min() == -1 and u.max() == 1 and torch.equal(to_uint8(u), v)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


@pytest.mark.parametrize("n, b, drop_last", [(10, 3, False), (12, 4, True), (10, 3, True)])
def test_batches_cover_each_sample_once_per_epoch(n, b, drop_last):
    data = _indexed(n)
    batches = TensorBatches(data, b, torch.Generator().manual_seed(1), drop_last=drop_last)
    epochs = []
    for _ in range(3):
        seen = []
        for _ in range(batches.batches_per_epoch):
            x, y = next(batches)
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 4, 4) and x.min() >= -1 and x.max() <= 1
            assert torch.equal(to_uint8(x), data.x[y]) and y.dtype == torch.int64
            seen += y.tolist()
        assert len(seen) == len(set(seen)) == (n - n % b if drop_last else n)
        epochs.append(seen)
    assert batches.epoch == 2 and epochs[0] != epochs[1]


def test_batches_resume_exactly(tmp_path):
    data = _indexed(10)
    gen = torch.Generator().manual_seed(5)
    a = TensorBatches(data, 3, gen)
    fresh = a.state_dict()
    for _ in range(4):  # into the second epoch (3 batches per epoch)
        next(a)
    torch.save(a.state_dict(), tmp_path / "state.pt")
    expected = [next(a)[1].tolist() for _ in range(7)]
    gen.manual_seed(999)  # the generator moves on (or is shared): the state holds what is needed

    b = TensorBatches(data, 3, torch.Generator().manual_seed(123))
    b.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert [next(b)[1].tolist() for _ in range(7)] == expected and b.epoch == a.epoch

    c = TensorBatches(data, 3, torch.Generator())
    c.load_state_dict(fresh)
    first = TensorBatches(data, 3, torch.Generator().manual_seed(5))
    assert [next(c)[1].tolist() for _ in range(4)] == [next(first)[1].tolist() for _ in range(4)]

    with pytest.raises(DataError, match="cannot resume"):
        TensorBatches(data, 2, torch.Generator()).load_state_dict(fresh)
    with pytest.raises(DataError, match="batch size 11"):
        TensorBatches(data, 11, torch.Generator())


def test_sharded_batches_are_the_slices_of_the_global_batch(tmp_path):
    data = load_dataset("synthetic", tmp_path, n=40, size=8, num_classes=4, seed=0)
    whole = TensorBatches(data, 8, torch.Generator().manual_seed(5))
    shards = [TensorBatches(data, 8, torch.Generator().manual_seed(5), shard=(r, 2)) for r in range(2)]
    for _ in range(12):  # across epoch boundaries (5 batches per epoch)
        x, y = next(whole)
        parts = [next(s) for s in shards]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        assert all(len(p[1]) == 4 for p in parts)
    with pytest.raises(DataError, match="cannot be split evenly across 3 workers"):
        TensorBatches(data, 8, torch.Generator(), shard=(0, 3))
