"""The training skeleton (harness.training.loop) and every recipe on it, in this process (no Ray).

For every recipe at smoke size: a run killed right after its first mid-run checkpoint and started again in the same
directory reports the same metric history as an uninterrupted run (the driver keeps the first value per step, as
it does). Timing metrics are left out of the comparison; everything trained or evaluated must be identical.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import pytest
import torch
from recipe_payloads import smoke_payload

from harness.recipes import get_recipe
from harness.study.spec import expand_trials, load_study
from harness.training.context import TrialContext, TrialFailed
from harness.training.loop import ReportWindow, Training

TIMING = re.compile(r".*(_per_s|_seconds|_ms|_ms_per_\w+|_share|_unix)$|^(reports|report_seconds)$")

# recipe -> (study file, substudy or None, --set overrides): smoke size, several reports, a checkpoint mid-run
CASES = {
    "edm": ("block_sharing.yaml", None, {"variants": ["D8"], "train.steps": 6, "train.log_every": 1,
                                         "eval.every": 3, "eval.n_samples": 8, "eval.batch_size": 8,
                                         "train.augment_prob": 0.5}),
    "vdiff": ("classical_generator.yaml", "baseline", {"train.steps": 6, "train.log_every": 1, "eval.every": 3,
                                                       "eval.n_samples": 8, "eval.batch_size": 8}),
    "gan": ("classical_generator.yaml", "gan", {"train.steps": 6, "train.log_every": 1, "eval.every": 3,
                                                "eval.n_samples": 8, "eval.batch_size": 8}),
    "classify": ("classical_constraints.yaml", "baseline", {"train.steps": 6, "train.log_every": 1, "eval.every": 3,
                                                            "seeds": [0]}),
    "score": ("mnist_compression.yaml", "ncsn_depthwise",
              {"train.epochs": 3, "train.log_every": 1, "eval.n_samples": 8, "eval.batch_size": 8}),
    "ddpm_image": ("mnist_compression.yaml", "ddpm_baseline",
                   {"train.epochs": 2, "train.log_every": 1, "train.batch_size": 16, "data.limit": 32,
                    "eval.n_samples": 4, "eval.batch_size": 4}),
    "ddpm": ("toy_ddpm.yaml", None, {"train.epochs": 4, "train.log_every": 1, "train.checkpoint_every": 2}),
    "null": (None, None, {"train.steps": 6, "train.report_every": 1, "train.checkpoint_every": 3}),
}


class Killed(BaseException):
    """Stands in for the process dying: raised out of the report after the first mid-run checkpoint."""


def payload_for(recipe: str, tmp: Path | None = None) -> dict:
    study, part, sets = CASES[recipe]
    if study is None:  # the null recipe has no study file: the overhead benchmark's study
        import yaml

        from harness.bench.runs import null_study

        path = (tmp or Path(tempfile.mkdtemp())) / "null_resume.yaml"
        path.write_text(yaml.safe_dump(null_study("null_resume", 1, 1, steps=6, work=1, report_every=1)))
        trials = expand_trials(load_study(path, None, dict(sets)))
        return trials[0].payload()
    return smoke_payload(recipe, study, part, sets)


def run_trial(payload: dict, tmp: Path, kill_after_checkpoint: bool = False) -> list[dict]:
    """The recipe's trial function in this process; returns the reports the driver would receive."""
    sent: list[dict] = []
    ckpt_dir = tmp / "run" / "checkpoints"

    def report(p: dict) -> None:
        sent.append(p)
        if kill_after_checkpoint and not p.get("final") and any(ckpt_dir.glob("step_*.pt")):
            raise Killed

    paths = {"run_dir": str(tmp / "run"), "cache_dir": str(tmp.parent / "cache"), "data_root": str(tmp / "data")}
    ctx = TrialContext(payload, paths, report)
    fn = get_recipe(payload["recipe"]).load_trial_fn()
    try:
        fn(payload, ctx)
    except Killed:
        pass
    return sent


def history(*runs: list[dict]) -> dict[tuple[str, int], float]:
    """(metric, step) -> value, the first value of each as the driver logs it; timing metrics left out."""
    out: dict[tuple[str, int], float] = {}
    for reports in runs:
        for p in reports:
            for k, v in p["metrics"].items():
                if not TIMING.match(k):
                    out.setdefault((k, p["step"]), v)
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-9))
        for k in a)


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_history(recipe, tmp_path):
    payload = payload_for(recipe, tmp_path)
    whole = history(run_trial(payload, tmp_path / "whole"))
    first = run_trial(payload, tmp_path / "killed", kill_after_checkpoint=True)
    assert first and not first[-1].get("final"), "the run was not killed mid-way: no mid-run checkpoint"
    second = run_trial(payload, tmp_path / "killed")
    assert second[-1].get("final")
    resumed = history(first, second)
    assert same(resumed, whole), sorted(set(resumed.items()) ^ set(whole.items()))[:10]
    assert any(k[0].startswith(("loss", "train_loss")) for k in whole)
    if recipe == "null":  # its losses are constant: the resume point is what shows
        assert second[0]["tags"].get("harness.resumed_from_step") == "3" or any(
            p["tags"].get("harness.resumed_from_step") == "3" for p in second)


# ------------------------------------------------------------------------------------------ the skeleton's parts
class _Acc:
    """Two ranks whose other rank reported the same sums (the mean over ranks is then this rank's)."""

    device = torch.device("cpu")

    def reduce(self, t: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "mean"
        return (t + t) / 2


class _Ctx:
    def data_wait_share(self, elapsed: float) -> float:
        return 0.25


def test_report_window_means_over_steps_and_samples_and_refuses_a_non_finite_loss():
    w = ReportWindow(_Acc(), world_size=2)
    w.add(4, loss=torch.tensor(1.0), correct=torch.tensor(3.0))
    w.add(4, loss=torch.tensor(3.0), correct=torch.tensor(1.0))
    m = w.close(_Ctx(), 2, per_sample=("correct",))
    assert m["loss"] == 2.0 and m["correct"] == 0.5 and m["data_wait_share"] == 0.25
    assert m["images_per_s"] > 0
    w.add(4, loss=torch.tensor(float("nan")))
    with pytest.raises(TrialFailed, match=r"^training loss became nan by step 3$"):
        w.close(_Ctx(), 3)


def test_training_resumes_tracked_parts_random_streams_and_step(tmp_path):
    from harness.recipes.edm_config import EDMTrain

    payload = payload_for("edm")
    paths = {"run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "data_root": str(tmp_path)}
    sent: list[dict] = []
    a = Training(payload, TrialContext(payload, paths, sent.append), EDMTrain)
    lin = torch.nn.Linear(2, 2)
    a.track(model=lin)
    a.gen.manual_seed(123)
    a.step = 7
    a.ctx.save_checkpoint(a.checkpoint(), 7)
    draw = torch.rand(3, generator=a.gen)

    b = Training(payload, TrialContext(payload, paths, sent.append), EDMTrain)
    lin2 = torch.nn.Linear(2, 2)
    b.track(model=lin2)
    assert b.resume() == 7 and b.step == 7
    assert torch.equal(lin2.weight, lin.weight)
    assert torch.equal(torch.rand(3, generator=b.gen), draw)
    assert b.take_tags() == {"harness.resumed_from_step": "7"} and b.take_tags() == {}
