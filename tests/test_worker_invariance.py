"""Worker-count invariance of every recipe that trains data-parallel: two gloo workers on the CPU train the same
loss curve as one worker with the same global batch.

The training skeleton (harness.training.loop) seeds ``run.gen`` identically on every rank; a recipe draws everything
random per sample (batch order, noise, timesteps, augmentation, dropped labels) from it for the global batch and
keeps this rank's slice, and DDP averages the gradients of the equal slices. So two workers follow one worker's loss
curve up to the order of float reductions (the tolerance is tests/test_scale.py's, whose EDM run goes through Ray
Train and the CLI; this file runs each recipe's trial function directly, which is fast enough for every recipe).

Each two-worker run is two processes (a small script, below) with RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
set, which create the gloo process group before the recipe starts, as Ray Train does; Accelerate then uses it
(the workers check that it reports two processes on a gloo group). Rank 0's reports are compared with those of a
one-worker run of the same payload in this process: the same report steps, training losses within rel 1e-3, and a
loss that moves.

- edm, vdiff: drawn for the global batch by design (vdiff with its model dropout off: see ``MODEL``).
- gan: drawn for the global batch too, but the generator's BatchNorm normalises each rank's slice with the slice's
  own statistics, so two workers agree with one only to about 5e-5 here (within the tolerance; SyncBatchNorm would
  make it exact).
- score, ddpm_image: t and the noise come from ``dsm_draws`` / ``DDPM.draw`` for the step's global batch and each
  rank takes its slice; their data (``limit``) is sized so that the epoch's last, smaller batch also splits evenly
  (a batch of odd size would leave one sample untrained on two workers: the restriction their docstrings state).
- ddpm (point clouds): the same, over the recipe's own permutation of the points; the points are sized likewise.
  (Before, every rank trained the whole global batch with the same draws: invariant too, but without sharing work.)
- ddpm_image's unconditional batches (labels dropped, the same batches on every rank) leave the label embedding
  without gradients, which DDP refuses: the recipe averages that step's gradients itself. Its smoke case drops
  the labels of at least one batch, so this path runs here.
- classify: crop offsets, flips and one RandAugment seed per group of the global batch come from ``run.gen``; each
  rank augments its slice (a group cut by the slice boundary under the same seed on both sides).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_payloads import smoke_payload

from harness.recipes import get_recipe
from harness.training.context import TrialContext

REPO = Path(__file__).resolve().parents[1]
LOSS = re.compile(r"^(train_)?loss")
REL = 1e-3  # tests/test_scale.py's tolerance: float reduction order, not statistics

# recipe -> (study file, substudy or None, --set overrides): smoke size, a report per step (or epoch), an even
# global batch, and the evaluation only at the end (rank 0 only: it does not touch the training curve)
CASES = {
    "edm": ("block_sharing.yaml", None, {"variants": ["D8"], "train.steps": 4, "train.log_every": 1,
                                         "eval.every": 4, "eval.n_samples": 8, "eval.batch_size": 8,
                                         "train.augment_prob": 0.5}),
    "vdiff": ("classical_generator.yaml", "baseline", {"train.steps": 4, "train.log_every": 1, "eval.every": 4,
                                                       "eval.n_samples": 8, "eval.batch_size": 8}),
    "gan": ("classical_generator.yaml", "gan", {"train.steps": 4, "train.log_every": 1, "eval.every": 4,
                                                "eval.n_samples": 8, "eval.batch_size": 8}),
    # a fixed peak LR: the range test (its own streams, batches of the per-rank size) depends on the worker count
    "classify": ("classical_constraints.yaml", "baseline", {"train.steps": 4, "train.log_every": 1,
                                                            "train.lr": 1e-3, "eval.every": 4, "seeds": [0]}),
    # 40 images in global batches of 16: 16, 16, then 8 (the epoch's last, smaller batch, split 4 + 4)
    "score": ("mnist_compression.yaml", "ncsn_depthwise",
              {"train.epochs": 3, "train.log_every": 1, "train.batch_size": 16, "data.limit": 40,
               "eval.n_samples": 4, "eval.batch_size": 4, "eval.sampler_steps": 2}),
    "ddpm_image": ("mnist_compression.yaml", "ddpm_baseline",
                   {"train.epochs": 3, "train.log_every": 1, "train.batch_size": 16, "data.limit": 40,
                    "data.size": 24, "eval.n_samples": 2, "eval.batch_size": 2}),
    # 200 points in global batches of 64: 64, 64, 64, then 8
    "ddpm": ("toy_ddpm.yaml", None, {"train.epochs": 3, "train.log_every": 1, "train.checkpoint_every": 3,
                                     "train.batch_size": 64, "data.options.n": 200, "eval.runs": 1,
                                     "eval.emd_n": 8}),
}
# model settings changed in the payload (a --set would reach every variant of the study, some without the key):
# model dropout draws from torch's global RNG, seeded per rank by design (harness.training.loop), so with it two
# workers agree with one only statistically (vdiff: about 4e-4 apart); off, the curves agree to float order
MODEL = {"vdiff": {"dropout": 0.0}}
# recipe -> why its case is expected to fail (xfail, strict)
NOT_INVARIANT: dict[str, str] = {
    "classify": ("its data, crops, flips and RandAugment are drawn for the global batch, but the classifier's "
                 "BatchNorm layers normalise each rank's slice with that slice's statistics (1.6e-3 apart at step 1; "
                 "torch's SyncBatchNorm does not run on CPU)"),
}

WORKER = r"""
import datetime, json, os, sys
import torch
import torch.distributed as dist

args = json.loads(sys.argv[1])
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
torch.set_num_threads(1)
# the process group first, as Ray Train creates it; Accelerate's PartialState then finds it initialised
dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))

from harness.recipes import get_recipe
from harness.training.context import TrialContext

sent = []
ctx = TrialContext(args["payload"], args["paths"], sent.append, rank=rank, world_size=world)
get_recipe(args["payload"]["recipe"]).load_trial_fn()(args["payload"], ctx)
acc = ctx.accelerator()  # the one the recipe created
out = {"reports": sent, "num_processes": acc.num_processes, "process_index": acc.process_index,
       "distributed_type": str(acc.distributed_type), "backend": dist.get_backend()}
with open(args["out"] + f".rank{rank}.json", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
"""


def payload_for(recipe: str) -> dict:
    payload = smoke_payload(recipe, *CASES[recipe])
    payload["model"].update(MODEL.get(recipe, {}))
    return payload


def paths_for(tmp: Path, cache: Path) -> dict[str, str]:
    # one cache for every run: the classifier feature extractor of the evaluation is trained once
    return {"run_dir": str(tmp / "run"), "cache_dir": str(cache), "data_root": str(tmp / "data")}


def one_worker(payload: dict, tmp: Path, cache: Path) -> list[dict]:
    """The trial function in this process, world size 1; the reports the driver would receive."""
    sent: list[dict] = []
    ctx = TrialContext(payload, paths_for(tmp, cache), sent.append)
    get_recipe(payload["recipe"]).load_trial_fn()(payload, ctx)
    return sent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_workers(payload: dict, tmp: Path, cache: Path, timeout: float = 300) -> list[dict]:
    """The trial function on ranks 0 and 1 of a gloo group (one process each, one thread each, one run directory
    as under Ray Train); both ranks' Accelerate state is checked, rank 0's reports returned."""
    tmp.mkdir(parents=True, exist_ok=True)  # both ranks write here; rank 1 may get there first
    out = tmp / "worker"
    args = json.dumps({"payload": payload, "paths": paths_for(tmp, cache), "out": str(out)})
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{log[-4000:]}"
    for rank in range(2):
        state = json.loads(Path(f"{out}.rank{rank}.json").read_text())
        assert state["num_processes"] == 2 and state["process_index"] == rank, state
        assert state["distributed_type"].endswith("MULTI_CPU") and state["backend"] == "gloo", state
    return json.loads(Path(f"{out}.rank0.json").read_text())["reports"]


def losses(reports: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Training-loss curves by metric name: [(step, value)] in report order."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for p in reports:
        for k, v in p["metrics"].items():
            if LOSS.match(k):
                curves.setdefault(k, []).append((p["step"], float(v)))
    return curves


def case(recipe: str):
    if recipe in NOT_INVARIANT:
        return pytest.param(recipe, marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                                            reason=NOT_INVARIANT[recipe]))
    return recipe


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("recipe", [case(r) for r in sorted(CASES)])
def test_two_gloo_workers_train_the_loss_curve_of_one_worker_with_the_same_global_batch(recipe, tmp_path, cache):
    payload = payload_for(recipe)
    one = one_worker(payload, tmp_path / "one", cache)
    two = two_workers(payload, tmp_path / "two", cache)
    assert one[-1].get("final") and two[-1].get("final")
    assert [p["step"] for p in one] == [p["step"] for p in two]
    c1, c2 = losses(one), losses(two)
    assert c1 and c1.keys() == c2.keys(), (sorted(c1), sorted(c2))
    for name in c1:
        assert [s for s, _ in c1[name]] == [s for s, _ in c2[name]], name
        assert all(math.isclose(a, b, rel_tol=REL) for (_, a), (_, b) in zip(c1[name], c2[name])), \
            (name, c1[name], c2[name])
    # and the loss moved: the comparison is not between two constant curves
    assert any(len(c) >= 2 and max(v for _, v in c) - min(v for _, v in c) > 10 * REL * abs(c[0][1])
               for c in c1.values()), c1
