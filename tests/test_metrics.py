"""harness.eval.image_metrics end to end through the real torch-fidelity path, offline.

Feature spaces here are a classifier trained on synthetic patterns and a *randomly initialised* Inception: only
properties are checked (self-distance ~0, a shifted set is farther than a fresh sample, caching), never values,
and nothing here is FID.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch import nn

from harness.eval import image_metrics as M

SIZE = 16


def patterns(n: int, seed: int, grey: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes of noisy coloured patterns (horizontal/vertical stripes, checkerboard, blob), uint8 NxCxHxW."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    r = torch.arange(SIZE).float()
    rows, cols = r[:, None].expand(SIZE, SIZE), r[None, :].expand(SIZE, SIZE)
    phase = torch.randint(0, 4, (n, 1, 1), generator=g).float()
    period = 2 + torch.randint(0, 3, (n, 1, 1), generator=g).float()
    stripes_h = torch.sin(2 * math.pi * (rows + phase) / (2 * period))
    stripes_v = torch.sin(2 * math.pi * (cols + phase) / (2 * period))
    checker = stripes_h * stripes_v * 2
    blob = 2 * torch.exp(-((rows - 8 - phase) ** 2 + (cols - 8 + phase) ** 2) / 12) - 1
    pat = torch.stack([stripes_h, stripes_v, checker, blob], 1)[torch.arange(n), y]  # N x H x W
    palette = torch.tensor([[1.0, 0.3, 0.2], [0.2, 1.0, 0.3], [0.3, 0.2, 1.0], [0.9, 0.9, 0.2]])
    colour = palette[y] + 0.15 * torch.randn(n, 3, generator=g)
    x = 128 + 90 * pat[:, None] * colour[:, :, None, None] + 12 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    if grey:
        x = x.mean(1, keepdim=True)
    return x.clamp(0, 255).to(torch.uint8), y


def oriented_grey(n: int, seed: int) -> torch.Tensor:
    """Unlabelled grey images with an up/down gradient and a bright corner: rotations are recognisable."""
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(SIZE).float()
    base = 40 + 10 * r[:, None].expand(SIZE, SIZE).clone()
    base[:4, :4] = 250
    x = base + 20 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    return x.clamp(0, 255).to(torch.uint8)


def brighten(x: torch.Tensor, amount: int = 70) -> torch.Tensor:
    return (x.int() + amount).clamp(0, 255).to(torch.uint8)


def random_inception_weights(path: Path, seed: int = 0) -> Path:
    """A randomly initialised state dict for torch-fidelity's FeatureExtractorInceptionV3 (its real architecture).

    Its distances are not FID (docs/conventions.md, "Every number is labelled"). Convs are He-normal so activations
    keep their scale through the depth; BN stays the identity; ``fc`` is NaN so an Inception Score would fail loudly.
    """

    class Bare(tf_inception.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:  # keep the freshly built layers
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    torch.manual_seed(seed)
    net = Bare(M.INCEPTION_NAME, ["2048"], feature_extractor_weights_path=empty)
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    sd = net.state_dict()
    sd["fc.weight"].fill_(float("nan"))
    sd["fc.bias"].fill_(float("nan"))
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = patterns(400, seed=0)
    return M.train_classifier_extractor(x, y, 4, tmp_path_factory.mktemp("clf"), "patterns-test", epochs=3)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_inception_weights(tmp_path_factory.mktemp("inc") / "random-inception.pth", seed=0)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub and harness cache (no converted weights), and torch-fidelity's downloader made to fail
    loudly if anything calls it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "harness-cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("attempted to download Inception weights")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_network)
    return tmp_path / "torch-home" / "hub" / "checkpoints" / M.INCEPTION_FILENAME


def test_classifier_trained_once_with_metadata(classifier: Path, tmp_path: Path) -> None:
    meta = M.classifier_metadata(classifier)
    assert meta["task"] == "labels" and meta["num_classes"] == 4 and meta["image_size"] == [SIZE, SIZE]
    assert meta["n_train"] + meta["n_heldout"] == 400
    assert meta["heldout_accuracy"] > 0.9  # four easy classes: the feature space separates them
    payload = torch.load(classifier, weights_only=True)
    assert payload["arch_version"] == M.CLASSIFIER_ARCH_VERSION
    mtime = classifier.stat().st_mtime_ns
    x, y = patterns(400, seed=0)
    again = M.train_classifier_extractor(x, y, 4, classifier.parent, "patterns-test", epochs=3)
    assert again == classifier and classifier.stat().st_mtime_ns == mtime


def test_classifier_distance_properties(classifier: Path, tmp_path: Path) -> None:
    ref, _ = patterns(200, seed=1)
    fresh, _ = patterns(150, seed=2)
    kw = dict(cache_dir=tmp_path, extractor="classifier", classifier=classifier)
    same = M.image_distance(ref, ref, "ref1", **kw)
    near = M.image_distance(fresh, ref, "ref1", **kw)
    far = M.image_distance(brighten(fresh), ref, "ref1", **kw)

    assert {"fid", "kid", "kid_std"}.isdisjoint(same)  # not Inception: never called FID
    # Unbiased KID of a set with itself is slightly negative (the cross term keeps the diagonal), not 0.
    assert abs(same["fd_classifier"]) < 1e-3 and abs(same["kd_classifier"]) < 0.1 * far["kd_classifier"]
    assert far["fd_classifier"] > 2 * near["fd_classifier"] > 0
    assert far["kd_classifier"] > near["kd_classifier"]
    assert near["n_samples"] == 150 and near["n_reference"] == 200 and near["kid_subset_size"] == 150
    assert near["extractor"].startswith("classifier:") and near["extractor_accuracy"] > 0.9
    assert str(classifier) in near["weights"] and "sha256:" in near["weights"]


def test_reference_cache_reused(classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    processed: list[int] = []
    forward = M.ClassifierFeatureExtractor.forward

    def counting_forward(self: M.ClassifierFeatureExtractor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        processed.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(M.ClassifierFeatureExtractor, "forward", counting_forward)
    ref, _ = patterns(120, seed=3)
    samples, _ = patterns(60, seed=4)
    kw = dict(cache_dir=tmp_path, extractor="classifier", classifier=classifier)

    first = M.image_distance(samples, ref, "refkey", **kw)
    assert sum(processed) == 60 + 120
    cached = sorted(tmp_path.glob(f"{first['reference_cache']}*.npz"))
    assert len(cached) == 1 and "refkey" in cached[0].name  # features + FID statistics, one plain .npz
    assert not list(tmp_path.glob("*.pt"))  # torch-fidelity's own (pickled) cache is not used
    mtimes = [p.stat().st_mtime_ns for p in cached]

    processed.clear()
    second = M.image_distance(samples, ref, "refkey", **kw)
    assert sum(processed) == 60  # only the samples went through the network
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    assert second == first

    # Same caller key, different contents: the reference digest in the name keeps the caches apart.
    processed.clear()
    other = M.image_distance(samples, brighten(ref), "refkey", **kw)
    assert sum(processed) == 60 + 120 and other["reference_cache"] != first["reference_cache"]


def test_grey_images_and_rotation_fallback(tmp_path: Path) -> None:
    path = M.train_classifier_extractor(oriented_grey(240, 0), None, 0, tmp_path, "grey-unlabelled", epochs=3)
    meta = M.classifier_metadata(path)
    assert meta["task"] == "rotation" and meta["num_classes"] == 4 and meta["heldout_accuracy"] > 0.5
    ref, fresh = oriented_grey(100, 1), oriented_grey(100, 2)
    assert ref.shape[1] == 1
    kw = dict(cache_dir=tmp_path, extractor="classifier", classifier=path)
    near = M.image_distance(fresh, ref, "grey", **kw)
    far = M.image_distance(torch.flip(fresh, dims=(-2,)), ref, "grey", **kw)  # upside down
    assert far["fd_classifier"] > near["fd_classifier"] and near["n_samples"] == 100


def test_random_inception_end_to_end(random_inception: Path, tmp_path: Path, offline_hub: Path) -> None:
    """The real inception-v3-compat path with random weights (299x299 on CPU, so n is small).

    Random deep features rank sets less reliably than trained ones; with these fixed seeds the brightened set is
    ~100x farther than the fresh one, so the check is far from a coin flip.
    """
    ref, _ = patterns(12, seed=10)
    fresh, _ = patterns(12, seed=20)
    kw = dict(cache_dir=tmp_path, weights_path=random_inception)
    same = M.image_distance(ref, ref, "inc-ref", **kw)
    near = M.image_distance(fresh, ref, "inc-ref", **kw)
    far = M.image_distance(brighten(fresh, 100), ref, "inc-ref", **kw)

    assert abs(same["fid"]) < 1e-2 * near["fid"]
    assert abs(same["kid"]) < 0.1 * far["kid"]
    assert far["fid"] > near["fid"] > 0 and far["kid"] > near["kid"]
    assert far["n_samples"] == far["n_reference"] == far["kid_subset_size"] == 12
    assert far["extractor"] == "inception-v3-compat" and str(random_inception) in far["weights"]
    assert (tmp_path / f"{far['reference_cache']}.npz").is_file() and not list(tmp_path.glob("*.pt"))


def test_inception_weights_missing_offline(offline_hub: Path, random_inception: Path, tmp_path: Path) -> None:
    x, _ = patterns(8, seed=7)
    with pytest.raises(M.MetricsError, match="not available offline") as err:
        M.image_distance(x, x, "r", cache_dir=tmp_path)
    assert str(offline_hub) in str(err.value) and "metrics.inception_weights" in str(err.value)
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(M.MetricsError, match=str(missing)):
        M.image_distance(x, x, "r", cache_dir=tmp_path, weights_path=missing)

    # A file at the named path is then used as torch-fidelity's own (no download: the downloader would raise).
    offline_hub.parent.mkdir(parents=True)
    offline_hub.write_bytes(random_inception.read_bytes())
    out = M.image_distance(x[:3], x[3:6], "r", cache_dir=tmp_path, kid=False)
    assert out["weights"].startswith("official sha256:") and out["kid_subset_size"] is None and "kid" not in out


def test_user_errors(classifier: Path, tmp_path: Path) -> None:
    x, _ = patterns(8, seed=8)
    with pytest.raises(M.MetricsError, match="train_classifier_extractor"):
        M.image_distance(x, x, "r", cache_dir=tmp_path, extractor="classifier")
    with pytest.raises(M.MetricsError, match="at least 2"):
        M.image_distance(x[:1], x, "r", cache_dir=tmp_path, extractor="classifier", classifier=classifier)
    not_weights = tmp_path / "junk.pth"
    torch.save({"something": torch.zeros(1)}, not_weights)
    with pytest.raises(M.MetricsError, match="not the expected network"):
        M.image_distance(x, x, "r", cache_dir=tmp_path, weights_path=not_weights)
    with pytest.raises(ValueError, match="reference_key"):
        M.image_distance(x, x, "../escape", cache_dir=tmp_path, extractor="classifier", classifier=classifier)
