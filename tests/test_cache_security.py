"""Nothing the harness reads from disk may unpickle arbitrary objects (issue 16, item 1).

A planted pickle whose ``__reduce__`` runs a shell command (it touches a marker file) is put wherever the harness
reads: the reference-feature cache (torch-fidelity's old ``.pt`` names and the harness's ``.npz``), the classifier
extractor file, Inception weights (given, converted, or swapped after they were checked) and a CIFAR batch. The
marker must never appear; each call either refuses with a one-sentence harness error or ignores and rebuilds the
cache with the same numbers as a clean run. Tiny images and a one-epoch classifier keep every test to seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import pickle
import shlex
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torchvision import datasets as tvd

from harness.eval import image_metrics as M
from harness.eval import inception as fid_weights
from harness.training.data import DataError, load_dataset

SIZE = 16


class Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(Evil(marker), protocol=2)


def evil_torch_file(path: Path, marker: Path) -> Path:
    """A torch.save zip whose data.pkl runs the command under ``torch.load(weights_only=False)``."""
    torch.save({"state_dict": Evil(marker)}, path)
    return path


def images(n: int, seed: int, shift: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(40, 200, SIZE).view(1, 1, 1, SIZE).expand(n, 3, SIZE, SIZE)
    x = base + shift + 25 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return x.clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = torch.cat([images(16, 0), images(16, 1, shift=60)])
    y = torch.arange(2).repeat_interleave(16)
    return M.train_classifier_extractor(x, y, 2, tmp_path_factory.mktemp("clf"), "security-test", epochs=1)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a planted pickle ran code"


SAMPLES, REFERENCE = images(16, 2), images(16, 3, shift=30)


def distance(classifier: Path, cache_dir: Path, **kw: object) -> dict:
    return M.image_distance(SAMPLES, REFERENCE, "secref", cache_dir=cache_dir, extractor="classifier",
                            classifier=classifier, **kw)  # fmt: skip


def assert_valid_cache(path: Path) -> None:
    with np.load(path, allow_pickle=False) as f:
        assert {"key", "sha256", "features", "mu", "sigma"} <= set(f.files)
        assert f["features"].shape == (len(REFERENCE), 128) and f["features"].dtype == np.float32


# ---- reference-feature cache ----------------------------------------------------------------------------------


def test_planted_reference_cache_is_never_unpickled(classifier: Path, tmp_path: Path, marker: Path) -> None:
    clean = distance(classifier, tmp_path / "clean")
    name = clean["reference_cache"]
    cache = tmp_path / "cache"
    cache.mkdir()
    # torch-fidelity's names for the same cache name (features and FID statistics), and the harness's own file
    fe = M.CLASSIFIER_NAME
    for planted in (f"{name}-{fe}-features-penultimate.pt", f"{name}-{fe}-stat-fid-penultimate.pt"):
        evil_torch_file(cache / planted, marker)
    (cache / f"{name}.npz").write_bytes(evil_pickle(marker))

    with pytest.warns(UserWarning, match="Ignoring reference-feature cache"):
        again = distance(classifier, cache)
    assert again == clean
    assert_valid_cache(cache / f"{name}.npz")  # rebuilt in place
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert distance(classifier, cache) == clean  # and then used without complaint


def _rewrite(path: Path, **changes: object) -> None:
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    path.unlink()
    np.savez(path, **arrays)


def _with_sums(path: Path, **changes: np.ndarray) -> dict:
    """Changes with the sha256 entry recomputed, so only the other checks can catch them."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in ("features", "mu", "sigma")}
    arrays.update(changes)
    sums = np.array([M._array_sha256(arrays[k]) for k in ("features", "mu", "sigma")])
    return {**changes, "sha256": sums}


@pytest.mark.parametrize("damage", ["not a zip", "object array", "other key", "tampered", "float64", "too few rows"])
def test_bad_reference_cache_is_rebuilt(classifier: Path, tmp_path: Path, marker: Path, damage: str) -> None:
    clean = distance(classifier, tmp_path)
    path = tmp_path / f"{clean['reference_cache']}.npz"
    feats = np.load(path, allow_pickle=False)["features"]
    if damage == "not a zip":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "object array":  # needs allow_pickle to load, which is never given
        _rewrite(path, features=np.array([Evil(marker)], dtype=object))
    elif damage == "other key":
        _rewrite(path, key=np.array("harness reference features v1; something else"))
    elif damage == "tampered":
        _rewrite(path, features=feats + 1)
    elif damage == "float64":
        _rewrite(path, **_with_sums(path, features=feats.astype(np.float64)))
    else:
        _rewrite(path, **_with_sums(path, features=feats[:-1]))
    with pytest.warns(UserWarning, match=f"Ignoring reference-feature cache {path}"):
        assert distance(classifier, tmp_path) == clean
    assert_valid_cache(path)


def test_cache_equals_cache_free_torch_fidelity(classifier: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Same numbers as torch-fidelity's own calculate_metrics without any cache; the second call (KID or FID only)
    takes the reference features from the .npz instead of the network."""
    expected = torch_fidelity.calculate_metrics(
        input1=M._UInt8Images(SAMPLES), input2=M._UInt8Images(REFERENCE), cache=False,
        feature_extractor=M.CLASSIFIER_NAME, feature_extractor_weights_path=str(classifier), fid=True, kid=True,
        kid_subset_size=len(SAMPLES), cuda=False, batch_size=32, rng_seed=7, save_cpu_ram=True, verbose=False,
    )  # fmt: skip
    processed: list[int] = []
    forward = M.ClassifierFeatureExtractor.forward

    def counting_forward(self: M.ClassifierFeatureExtractor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        processed.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(M.ClassifierFeatureExtractor, "forward", counting_forward)
    first = distance(classifier, tmp_path, seed=7)
    assert sum(processed) == len(SAMPLES) + len(REFERENCE)
    assert first["fd_classifier"] == expected[torch_fidelity.KEY_METRIC_FID]
    assert first["kd_classifier"] == expected[torch_fidelity.KEY_METRIC_KID_MEAN]
    assert first["kd_classifier_std"] == expected[torch_fidelity.KEY_METRIC_KID_STD]

    processed.clear()
    assert distance(classifier, tmp_path, seed=7) == first
    fid_only = distance(classifier, tmp_path, seed=7, kid=False)
    assert sum(processed) == 2 * len(SAMPLES)  # the reference came from the cache both times
    assert fid_only["fd_classifier"] == first["fd_classifier"] and "kd_classifier" not in fid_only


def test_concurrent_callers_wait_for_the_lock(classifier: Path, tmp_path: Path) -> None:
    name = distance(classifier, tmp_path / "probe")["reference_cache"]
    cache = tmp_path / "cache"
    cache.mkdir()
    results: list[dict] = []
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another trial computing the same reference
        worker = threading.Thread(target=lambda: results.append(distance(classifier, cache)))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not results  # waiting, not computing beside it
    worker.join(timeout=60)
    assert len(results) == 1 and (cache / f"{name}.npz").is_file()


# ---- weights files -----------------------------------------------------------------------------------------------


def test_planted_classifier_file_refused(tmp_path: Path, marker: Path) -> None:
    x = images(8, 4)
    path = tmp_path / f"classifier-planted-labels-v{M.CLASSIFIER_ARCH_VERSION}-e1-s0.pt"
    evil_torch_file(path, marker)
    path.with_suffix(".json").write_text("{}")
    assert M.train_classifier_extractor(x, torch.zeros(8, dtype=torch.long), 2, tmp_path, "planted", epochs=1) == path
    with pytest.raises(M.MetricsError, match="Cannot read weights file") as err:
        M.image_distance(x, x, "r", cache_dir=tmp_path, extractor="classifier", classifier=path)
    assert "\n" not in str(err.value)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch hub and harness cache; the downloader fails loudly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "harness-cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("attempted to download Inception weights")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_network)
    return tmp_path


@pytest.mark.parametrize("where", ["weights_path", "torch hub", "converted"])
def test_planted_inception_weights_refused(offline: Path, marker: Path, where: str) -> None:
    path = {"weights_path": offline / "given.pth", "torch hub": M.default_inception_weights(),
            "converted": fid_weights.converted_path()}[where]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    evil_torch_file(path, marker)
    x = images(4, 5)
    with pytest.raises(M.MetricsError, match="Cannot read weights file") as err:
        M.image_distance(x, x, "r", cache_dir=offline / "cache", weights_path=path if where == "weights_path" else None)
    assert "\n" not in str(err.value)


def test_fid_weights_verify_refuses_planted_file(tmp_path: Path, marker: Path) -> None:
    """``harness fid-weights verify <file>`` builds torch-fidelity's extractor: it must not be handed the file."""
    path = evil_torch_file(tmp_path / "weights.pth", marker)
    with pytest.raises(M.MetricsError, match="Cannot read weights file"):
        fid_weights.kid_example(path, seed=42)


def test_inception_weights_swapped_after_check(offline: Path, marker: Path) -> None:
    """The digest is memoised by (path, size, mtime); a file replaced by one of the same size and mtime after that
    check must still never reach an unpickler that runs code."""
    path = offline / "weights.pth"
    torch.save({"Mixed_7c.branch_pool.conv.weight": torch.zeros(4)}, path)
    M._inception_extractor(path, False)  # checked (and memoised) once in this process
    st = path.stat()
    evil = evil_pickle(marker)
    assert len(evil) < st.st_size
    path.write_bytes(evil + b"\0" * (st.st_size - len(evil)))  # pickle stops at its STOP opcode
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    x = images(4, 6)
    with pytest.raises(M.MetricsError, match="Cannot read weights file"):
        M.image_distance(x, x, "r", cache_dir=offline / "cache", weights_path=path, kid=False)


def test_verified_weights_feed_torch_fidelity_unchanged(tmp_path: Path) -> None:
    """The in-memory copy torch-fidelity gets holds exactly the file's tensors."""
    sd = {"Mixed_7c.branch_pool.conv.weight": torch.randn(3, 2), "fc.bias": torch.arange(5.0)}
    torch.save(sd, tmp_path / "w.pth")
    buf = M.verified_inception_weights(tmp_path / "w.pth")
    got = torch.load(buf, weights_only=True)
    assert isinstance(buf, io.BytesIO) and got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


# ---- CIFAR batches -----------------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, dumps=pickle.dumps) -> dict[str, bytes]:
    folder = root / tvd.CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for fname, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list:
        x = rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8)
        out[fname] = x
        (folder / fname).write_bytes(dumps({"data": x, "labels": [0, 1], "batch_label": fname}))
    (folder / "batches.meta").write_bytes(dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return out


def trust(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Point torchvision's md5 table at the files on disk (as an md5 collision would): only the unpickler is left."""
    folder, cls = root / tvd.CIFAR10.base_folder, tvd.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(folder / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


@pytest.mark.parametrize("fname, download", [("data_batch_1", False), ("batches.meta", False),
                                             ("data_batch_2", True)])  # fmt: skip
def test_planted_cifar_batch_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: Path, fname: str,
                                     download: bool) -> None:  # fmt: skip
    write_cifar10(tmp_path)
    bad = tmp_path / tvd.CIFAR10.base_folder / fname
    bad.write_bytes(pickle.dumps({"data": Evil(marker), "labels": [0, 1]}))
    trust(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="is not a CIFAR batch file") as err:
        load_dataset("cifar10", tmp_path, download=download)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote for the real CIFAR files: byte strings as STRING opcodes (read back as
    latin-1 ``str``) and NumPy 1 module names."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        name = name or obj.__name__
        module = obj.__module__.replace("numpy._core", "numpy.core")
        module = "numpy.core.multiarray" if name == "_reconstruct" else module
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[type] = save_global


def _py2_dumps(obj: dict) -> bytes:
    def as_bytes(v: object) -> object:
        if isinstance(v, str):
            return v.encode("latin1")
        return [as_bytes(i) for i in v] if isinstance(v, list) else v

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({k.encode(): as_bytes(v) for k, v in obj.items()})
    return buf.getvalue()


@pytest.mark.parametrize("dumps", [pickle.dumps, lambda o: pickle.dumps(o, protocol=2),
                                   lambda o: pickle.dumps(o, protocol=5), _py2_dumps])  # fmt: skip
def test_cifar_batches_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dumps) -> None:
    """The restricted unpickler reads every way a genuine batch file is written, Python 2's included."""
    files = write_cifar10(tmp_path, dumps)
    trust(monkeypatch, tmp_path)
    train = load_dataset("cifar10", tmp_path)
    want = np.concatenate([files[f] for f, _ in tvd.CIFAR10.train_list]).reshape(-1, 3, 32, 32)
    assert torch.equal(train.x, torch.from_numpy(want)) and train.y.tolist() == [0, 1] * 5
    assert train.classes == [f"c{i}" for i in range(10)]
