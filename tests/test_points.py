"""Toy 3-D point clouds (harness.training.point_clouds) and the homework's metrics (harness.eval.point_metrics).

No file outside the repository is read: files in the homework's and the harness's layouts are written to tmp_path
from the seeded generators. The metric oracles are spec 3.3's numbers (docs/papers.md), measured on the real files
("generator = random train subset" vs N(0, I) noise, normalised space); the generated stand-ins must land near them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness.eval.point_metrics import emd, emd_indices, emd_subsample, evaluate_points, gaussian_nll
from harness.training.data import DataError
from harness.training.point_clouds import GENERATORS, POINT_DATASETS, PointData, load_points

# sha256 of the generated float32 bytes (seed 0). A change means every machine's stand-in data changed.
GOLDEN = {
    ("sin_5_5", "train"): "259046e04bea6c2570c72d18f6b077ad620c96d80e83c9a13d9d7e9f19372618",
    ("helix", "test"): "b995efa747a1a34e82307ce3a19dcb907fda0eec1ea271406db64a308b679f9a",
}
# spec 3.3 on the real files: (NLL train subset, NLL noise, EMD128 train subset, EMD128 noise)
REFERENCE = {"sin_5_5": (2.614, 3.064, 66.0, 95.0), "helix": (2.254, 3.186, 58.0, 113.0)}
NPZ = {"helix": "helix_3d.npz", "sin_5_5": "sin_5_5_3d.npz"}


def write_npy(root, name: str, raw: dict[str, np.ndarray]) -> None:
    stem = {"helix": "helix_3D", "sin_5_5": "3d_sin_5_5"}[name]
    for split, a in raw.items():
        np.save(root / f"{stem}_{split}.npy", a)


def write_npz(path, raw: dict[str, np.ndarray]) -> None:
    x = np.concatenate([raw["train"], raw["test"]])
    split = np.array(["train"] * len(raw["train"]) + ["test"] * len(raw["test"]))
    np.savez(path, x=x, split=split, bounds=np.array([[-1, 1]] * 3))


# ---- generated data ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINT_DATASETS)
def test_generated_deterministic_and_normalised(name: str) -> None:
    a, b = load_points(name, None), load_points(name, None)
    assert a.content_hash() == b.content_hash() and torch.equal(a.x, b.x)
    assert a.source == "generated (seed 0)" and a.x.dtype == torch.float32 and a.x.shape[1] == 3
    assert load_points(name, None, seed=1).content_hash() != a.content_hash()
    zeros, ones = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(a.x.double().mean(0), zeros, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.x.double().std(0, correction=0), ones, atol=1e-6, rtol=0)
    test = load_points(name, None, "test")
    assert torch.equal(test.mean, a.mean) and torch.equal(test.std, a.std)  # test uses the train statistics
    assert 0 < test.x.double().mean(0).abs().max() < 0.1


@pytest.mark.parametrize(("name", "split"), list(GOLDEN))
def test_generated_golden_bytes(name: str, split: str) -> None:
    assert load_points(name, None, split).content_hash() == GOLDEN[name, split]


def test_generated_sizes() -> None:
    sin_tr, sin_te = load_points("sin_5_5", None), load_points("sin_5_5", None, "test")
    total = len(sin_tr) + len(sin_te)
    assert abs(total - 30_000 * math.pi / 4) < 300  # 30,000 uniform draws kept inside the disk (real files: 23,467)
    assert abs(len(sin_tr) - 2 * len(sin_te)) <= 2
    assert (len(load_points("helix", None)), len(load_points("helix", None, "test"))) == (10_000, 5_000)


def test_generated_geometry() -> None:
    sin = load_points("sin_5_5", None)
    p = sin.denormalise(sin.x).double()
    r = p[:, :2].norm(dim=1)
    assert r.max() < 1 + 1e-5 and p[:, :2].abs().max() <= 1 + 1e-5
    resid = p[:, 2] - torch.sin(5 * p[:, 0]) * torch.cos(5 * p[:, 1]) * (1 - r)
    assert abs(resid.std().item() - 0.01) < 0.001
    hx = load_points("helix", None)
    h = hx.denormalise(hx.x).double()
    rad = h[:, :2].norm(dim=1)
    assert abs(rad.mean().item() - 1) < 0.01 and abs(rad.std().item() - 0.03) < 0.003
    assert -2.15 < h[:, 2].min() < -1.95 and -1.05 < h[:, 2].max() < -0.85
    angle_err = torch.remainder(torch.atan2(h[:, 1], h[:, 0]) - 14 * h[:, 2] + math.pi, 2 * math.pi) - math.pi
    assert angle_err.std() < 0.6  # z noise 0.03 x 14 rad per unit z; a wrong pitch looks uniform (std 1.8)


def test_denormalise_round_trip_and_n() -> None:
    d = load_points("helix", None)
    torch.testing.assert_close(d.normalise(d.denormalise(d.x)), d.x)
    small = load_points("helix", None, n=100)
    assert len(small) == 100 and torch.equal(small.x, d.x[:100]) and torch.equal(small.std, d.std)
    with pytest.raises(DataError, match="n=0"):
        load_points("helix", None, n=0)


# ---- files -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POINT_DATASETS)
def test_homework_npy_round_trip(tmp_path, name: str) -> None:
    raw = GENERATORS[name](seed=3)
    write_npy(tmp_path, name, raw)
    write_npz(tmp_path / NPZ[name], GENERATORS[name](seed=4))
    mean, std = raw["train"].mean(0), raw["train"].std(0)
    for split in ("train", "test"):
        d = load_points(name, tmp_path, split)  # the .npy files win over the .npz
        assert d.source.endswith(f"_{split}.npy")
        np.testing.assert_array_equal(d.x.numpy(), ((raw[split] - mean) / std).astype(np.float32))
    test = load_points(name, tmp_path, "test")
    assert 1e-4 < test.x.double().mean(0).abs().max() < 0.1  # train statistics do not z-score test exactly


def test_npz_round_trip(tmp_path) -> None:
    raw = GENERATORS["sin_5_5"](seed=5)
    write_npz(tmp_path / NPZ["sin_5_5"], raw)
    tr, te = load_points("sin_5_5", tmp_path), load_points("sin_5_5", tmp_path, "test")
    assert tr.source == te.source == str(tmp_path / NPZ["sin_5_5"])
    assert (len(tr), len(te)) == (len(raw["train"]), len(raw["test"]))
    torch.testing.assert_close(te.denormalise(te.x).double(), torch.from_numpy(raw["test"]), atol=1e-6, rtol=0)
    assert torch.equal(tr.mean, torch.from_numpy(raw["train"].mean(0)))
    assert load_points("helix", tmp_path).source.startswith("generated")  # no helix files: generated


def test_unknown_name_and_split() -> None:
    with pytest.raises(DataError, match="'helx'.*did you mean helix") as e:
        load_points("helx", None)
    assert isinstance(e.value, UserError)
    with pytest.raises(DataError, match="'valid'"):
        load_points("helix", None, "valid")
    assert load_points("3d_sin_5_5", None, n=5).name == "sin_5_5"


def test_bad_files(tmp_path) -> None:
    raw = GENERATORS["helix"](seed=0)
    np.save(tmp_path / "helix_3D_train.npy", raw["train"])  # test file missing
    with pytest.raises(DataError, match="helix_3D_test.npy"):
        load_points("helix", tmp_path)
    np.save(tmp_path / "helix_3D_test.npy", raw["test"][:, :2])  # wrong shape
    with pytest.raises(DataError, match="helix_3D_test.npy.*N x 3"):
        load_points("helix", tmp_path, "test")
    (tmp_path / "helix_3D_test.npy").write_text("not numpy")
    with pytest.raises(DataError, match="cannot read .*helix_3D_test.npy"):
        load_points("helix", tmp_path)
    bad = raw["train"].copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "helix_3D_train.npy", bad)
    np.save(tmp_path / "helix_3D_test.npy", raw["test"])
    with pytest.raises(DataError, match="helix_3D_train.npy holds NaN"):
        load_points("helix", tmp_path)

    npz = tmp_path / NPZ["sin_5_5"]
    np.savez(npz, x=raw["train"])  # no split key
    with pytest.raises(DataError, match=f"{npz}.*'split'"):
        load_points("sin_5_5", tmp_path)
    np.savez(npz, x=raw["train"], split=np.array(["train"] * len(raw["train"])))
    with pytest.raises(DataError, match=f"{npz} holds no 'test'"):
        load_points("sin_5_5", tmp_path)
    npz.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"cannot read {npz}"):
        load_points("sin_5_5", tmp_path)


def test_pointdata_validates() -> None:
    with pytest.raises(ValueError, match="float32"):
        PointData("helix", "train", torch.zeros(4, 3, dtype=torch.float64), torch.zeros(3), torch.ones(3), "x")


# ---- metrics -----------------------------------------------------------------------------------------------------


def test_emd_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    brute = min(sum(np.linalg.norm(a[i] - b[p[i]]) for i in range(6)) for p in itertools.permutations(range(6)))
    assert emd(a, b) == pytest.approx(brute, rel=1e-12)
    assert emd(torch.from_numpy(a), torch.from_numpy(a)) == 0.0
    assert math.isnan(emd(np.full((6, 3), np.nan), b))
    with pytest.raises(ValueError, match="same shape"):
        emd(a, b[:5])


def test_emd_subsample_uses_shared_indices() -> None:
    rng = np.random.default_rng(1)
    gen, real = rng.normal(size=(300, 3)), rng.normal(size=(500, 3))
    idx = emd_indices(300, 128, 7)
    assert len(set(idx.tolist())) == 128 and idx.max() < 300
    assert emd_subsample(gen, real, idx=idx) == emd(real[idx], gen[idx])
    assert emd_subsample(gen, real, rng=7) == emd_subsample(gen, real, idx=idx)
    with pytest.raises(ValueError, match="range"):
        emd_subsample(real, gen)


def test_gaussian_nll_matches_naive_formula() -> None:
    rng = np.random.default_rng(2)
    real, gen, t = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)), 0.1

    def kernel(g: np.ndarray) -> float:  # eval_utils.gaussian_kernel term for term
        return np.mean([np.exp(np.sum(-0.5 * (g - x) ** 2) / (2 * t)) / np.sqrt(2 * np.pi * t) ** 3 for x in real])

    naive = -np.log(np.mean([kernel(g) for g in gen]))
    assert gaussian_nll(real, gen) == pytest.approx(naive, rel=1e-12)
    assert gaussian_nll(real, gen, chunk_elems=7) == pytest.approx(naive, rel=1e-12)
    # far apart: the naive form underflows to -log(0) = inf, the log-sum-exp does not
    far = gaussian_nll(np.zeros((1, 3)), np.full((1, 3), 10.0))
    assert far == pytest.approx(300 / (4 * t) + 1.5 * math.log(2 * math.pi * t), rel=1e-12)


@pytest.mark.parametrize("name", POINT_DATASETS)
def test_metric_oracles_on_generated_data(name: str) -> None:
    """Spec 3.3 reference values: NLL within 0.15; EMD128 (one draw varies by 5-10) averaged over 30 draws, 20 %."""
    train, test = load_points(name, None), load_points(name, None, "test")
    rng = np.random.Generator(np.random.PCG64(0))
    n = len(test)
    subset = train.x[rng.choice(len(train), n, replace=False)]
    noise = torch.from_numpy(rng.standard_normal((n, 3)))
    few = slice(0, 2000)  # NLL averages over generated points; 2000 of them keep the test fast
    nll_sub, nll_noise = gaussian_nll(test.x, subset[few]), gaussian_nll(test.x, noise[few])
    idxs = [emd_indices(n, 128, rng) for _ in range(30)]
    emd_sub = np.mean([emd_subsample(subset, test.x, idx=i) for i in idxs])
    emd_noise = np.mean([emd_subsample(noise, test.x, idx=i) for i in idxs])
    ref = REFERENCE[name]
    assert nll_sub == pytest.approx(ref[0], abs=0.15) and nll_noise == pytest.approx(ref[1], abs=0.15)
    assert emd_sub == pytest.approx(ref[2], rel=0.2) and emd_noise == pytest.approx(ref[3], rel=0.2)
    assert nll_sub < nll_noise - 0.3 and emd_sub < 0.75 * emd_noise


def test_evaluate_points_protocol() -> None:
    train, test = load_points("helix", None, n=400), load_points("helix", None, "test", n=200)
    calls = []

    def sample_fn(n: int, gen: torch.Generator) -> torch.Tensor:
        calls.append(n)
        return torch.randn(n, 3, generator=gen)

    out = evaluate_points(sample_fn, train, test, runs=3, seed=5)
    assert calls == [200] * 3 and out["n_generated"] == 200 and out["runs"] == 3
    # the documented protocol by hand: one torch generator, one PCG64 index stream, every train point for NLL
    gen, rng = torch.Generator().manual_seed(5), np.random.Generator(np.random.PCG64(5))
    per_run = []
    for _ in range(3):
        g = torch.randn(200, 3, generator=gen)
        idx = emd_indices(200, 128, rng)
        emds = [emd(test.x[idx], g[idx]), emd(train.x[idx], g[idx])]
        per_run.append(emds + [gaussian_nll(test.x, g), gaussian_nll(train.x, g)])
    per_run = np.array(per_run)
    for j, key in enumerate(["emd_test", "emd_train", "nll_test", "nll_train"]):
        assert out[key] == pytest.approx(per_run[:, j].mean(), rel=1e-12)
        assert out[f"{key}_std"] == pytest.approx(per_run[:, j].std(ddof=1), rel=1e-9)
    one = evaluate_points(sample_fn, train, test, runs=1)
    assert math.isnan(one["nll_test_std"]) and math.isfinite(one["nll_test"])
    with pytest.raises(ValueError, match="expected"):
        evaluate_points(lambda n, g: torch.zeros(n, 2), train, test)
