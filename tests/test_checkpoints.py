"""Checkpoints a trial cannot trust (issue 16 item 5): a corrupt newest checkpoint, another trial's checkpoint copied
in, a planted pickle, step numbers past 9 digits. Resuming falls back to the previous checkpoint (or a fresh start),
moves the bad file aside, warns, and says so on the trial's MLflow run; `harness sample` loads the same way."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from harness.run.session import StudySession
from harness.training.checkpoints import (
    CHECKPOINTS_KEPT,
    FALLBACK_TAG,
    IDENTITY_KEY,
    REPORT_KEY,
    CheckpointWarning,
    checkpoint_step,
    list_checkpoints,
    load_newest_checkpoint,
)
from harness.training.context import TrialContext

REPO = Path(__file__).resolve().parents[1]
HASH_A, HASH_B = "a" * 16, "b" * 16


def context(tmp_path: Path, sent: list | None = None, config_hash: str = HASH_A, run: str = "run",
            rank: int = 0, **trial) -> TrialContext:
    paths = {"run_dir": str(tmp_path / run), "cache_dir": str(tmp_path / "cache"), "data_root": str(tmp_path)}
    if trial.get("train_hash"):
        paths["train_dir"] = str(tmp_path / "trained" / trial["train_hash"])
    return TrialContext({"config_hash": config_hash, "train_hash": "", **trial}, paths,
                        (sent if sent is not None else []).append, rank=rank, world_size=2 if rank else 1)


def state(step: int) -> dict:
    return {"model": {"w": torch.full((2,), float(step))}, "step": step}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])  # what a full disk or a copy cut short leaves


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(tmp_path):
    ctx = context(tmp_path)
    for step in (100, 200):
        ctx.save_checkpoint(state(step), step)
    truncate(ctx.checkpoint_dir / "step_000000200.pt")
    (ctx.checkpoint_dir / "step_000000300.tmp").write_bytes(b"killed mid-write")  # never a checkpoint

    # another rank loads the same directory: it skips the file the same way, without moving it or warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rank1 = context(tmp_path, rank=1)
        assert rank1.load_checkpoint(required=("model", "step"))["step"] == 100
    assert not [w for w in caught if issubclass(w.category, CheckpointWarning)]
    assert (ctx.checkpoint_dir / "step_000000200.pt").exists()

    sent: list[dict] = []
    resumed = context(tmp_path, sent)
    with pytest.warns(CheckpointWarning, match=r"step_000000200\.pt.*unreadable.*step_000000200\.pt\.corrupt"):
        loaded = resumed.load_checkpoint(required=("model", "step"))
    assert loaded["step"] == 100 and torch.equal(loaded["model"]["w"], torch.full((2,), 100.0))
    assert IDENTITY_KEY not in loaded and REPORT_KEY not in loaded
    assert names(resumed.checkpoint_dir) == ["step_000000100.pt", "step_000000200.pt.corrupt", "step_000000300.tmp"]
    assert sent == []  # no extra report: the tag waits for the recipe's next one (Ray Train's report barrier)
    resumed.report(150, {"loss": 1.0}, tags={"harness.other": "x"})
    tag = sent[0]["tags"][FALLBACK_TAG]
    assert tag.startswith("step_000000200.pt unreadable (") and tag.endswith("; resumed from step 100")
    assert sent[0]["tags"]["harness.other"] == "x"
    resumed.report(160, {"loss": 1.0})
    assert FALLBACK_TAG not in sent[1]["tags"]  # once

    # training goes on: the file moved aside is never pruned as, nor mistaken for, a checkpoint
    for step in (200, 300):
        resumed.save_checkpoint(state(step), step)
    assert [p.name for p in list_checkpoints(resumed.checkpoint_dir)] == ["step_000000200.pt", "step_000000300.pt"]
    assert (resumed.checkpoint_dir / "step_000000200.pt.corrupt").exists()
    assert context(tmp_path).load_checkpoint()["step"] == 300


def test_the_fallback_tag_goes_with_the_replayed_reports_when_the_checkpoint_carries_some(tmp_path):
    ctx = context(tmp_path)
    ctx.report(100, {"loss": 1.0}, checkpoint=state(100))
    ctx.report(200, {"loss": 1.0}, checkpoint=state(200))
    (ctx.checkpoint_dir / "step_000000200.pt").write_bytes(b"\x00" * 64)
    sent: list[dict] = []
    with pytest.warns(CheckpointWarning):
        assert context(tmp_path, sent).load_checkpoint()["step"] == 100
    assert [p["step"] for p in sent] == [100]  # the replay, no payload added
    assert sent[0]["tags"][FALLBACK_TAG].endswith("; resumed from step 100")


def test_with_every_checkpoint_corrupt_the_trial_retrains_from_scratch_and_says_so(tmp_path):
    ctx = context(tmp_path)
    for step in (100, 200):
        ctx.save_checkpoint(state(step), step)
    truncate(ctx.checkpoint_dir / "step_000000200.pt")
    (ctx.checkpoint_dir / "step_000000100.pt").write_bytes(b"not a zip at all")
    sent: list[dict] = []
    fresh = context(tmp_path, sent)
    with pytest.warns(CheckpointWarning) as record:
        assert fresh.load_checkpoint() is None
    assert len([w for w in record if issubclass(w.category, CheckpointWarning)]) == 2
    assert names(fresh.checkpoint_dir) == ["step_000000100.pt.corrupt", "step_000000200.pt.corrupt"]
    fresh.report(1, {"loss": 1.0})
    tag = sent[0]["tags"][FALLBACK_TAG]
    assert "step_000000200.pt unreadable" in tag and "step_000000100.pt unreadable" in tag
    assert tag.endswith("; retrained from scratch")


def test_a_payload_that_is_not_a_checkpoint_is_refused(tmp_path):
    ctx = context(tmp_path)
    ctx.save_checkpoint(state(100), 100)
    torch.save([1, 2, 3], ctx.checkpoint_dir / "step_000000300.pt")  # loads, but is no checkpoint
    torch.save({"step": 200}, ctx.checkpoint_dir / "step_000000200.pt")  # no model: not this recipe's
    sent: list[dict] = []
    resumed = context(tmp_path, sent)
    with pytest.warns(CheckpointWarning):
        assert resumed.load_checkpoint(required=("model", "step"))["step"] == 100
    assert names(resumed.checkpoint_dir) == [
        "step_000000100.pt", "step_000000200.pt.corrupt", "step_000000300.pt.corrupt"]
    resumed.report(1, {})
    assert "not a checkpoint" in sent[0]["tags"][FALLBACK_TAG]


def test_another_trials_checkpoint_copied_in_is_refused_and_the_previous_one_resumes(tmp_path):
    ctx = context(tmp_path)
    for step in (100, 200):
        ctx.save_checkpoint(state(step), step)
    other = context(tmp_path, config_hash=HASH_B, run="other")
    other.save_checkpoint(state(300), 300)
    assert other.checkpoint_dir != ctx.checkpoint_dir
    shutil.copy(other.checkpoint_dir / "step_000000300.pt", ctx.checkpoint_dir)
    assert context(tmp_path, config_hash=HASH_B, run="other").load_checkpoint()["step"] == 300  # its own: fine

    sent: list[dict] = []
    resumed = context(tmp_path, sent)
    with pytest.warns(CheckpointWarning, match="another trial"):
        assert resumed.load_checkpoint()["step"] == 200
    assert names(resumed.checkpoint_dir) == ["step_000000100.pt", "step_000000200.pt", "step_000000300.pt.foreign"]
    resumed.report(1, {})
    assert sent[0]["tags"][FALLBACK_TAG] == (
        f"step_000000300.pt from another trial ({HASH_B}, not {HASH_A}); resumed from step 200")


def test_trials_sharing_a_trained_model_share_its_checkpoints(tmp_path):
    """Their checkpoints belong to the trained model (train_hash), not to the trial that happened to train it."""
    trainer = context(tmp_path, config_hash=HASH_A, run="a", train_hash="t" * 16)
    trainer.save_checkpoint(state(5), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        assert context(tmp_path, config_hash=HASH_B, run="b", train_hash="t" * 16).load_checkpoint()["step"] == 5
    elsewhere = context(tmp_path, config_hash=HASH_A, run="a", train_hash="u" * 16)
    elsewhere.checkpoint_dir.mkdir(parents=True)
    shutil.copy(trainer.checkpoint_dir / "step_000000005.pt", elsewhere.checkpoint_dir)
    with pytest.warns(CheckpointWarning, match="another trial"):
        assert elsewhere.load_checkpoint() is None


def test_a_planted_pickle_is_refused_without_running_it(tmp_path):
    class Planted:
        def __init__(self, marker: Path) -> None:
            self.marker = marker

        def __reduce__(self):
            return open, (str(self.marker), "w")  # unpickling it creates the marker file

    ctx = context(tmp_path)
    ctx.save_checkpoint(state(100), 100)
    marker = tmp_path / "pwned"
    torch.save({"model": Planted(marker), "step": 200}, ctx.checkpoint_dir / "step_000000200.pt")
    # the plant works against a plain load (a copy elsewhere, another marker): the test has teeth
    proof = tmp_path / "proof"
    torch.save({"model": Planted(proof)}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert proof.exists()

    sent: list[dict] = []
    resumed = context(tmp_path, sent)
    with pytest.warns(CheckpointWarning, match="weights-only load refused"):
        assert resumed.load_checkpoint()["step"] == 100
    assert not marker.exists()
    assert (resumed.checkpoint_dir / "step_000000200.pt.corrupt").exists()
    resumed.report(1, {})
    assert "weights-only load refused" in sent[0]["tags"][FALLBACK_TAG]


def test_checkpoints_are_ordered_by_step_number_past_nine_digits(tmp_path):
    assert CHECKPOINTS_KEPT == 2
    ctx = context(tmp_path)
    for step in (999_999_999, 1_000_000_000, 1_000_000_001):
        ctx.save_checkpoint(state(step), step)
    assert names(ctx.checkpoint_dir) == ["step_1000000000.pt", "step_1000000001.pt"]  # the newest two survive
    assert context(tmp_path).load_checkpoint()["step"] == 1_000_000_001

    # any padding, and only step_<digits>.pt files, count
    d = tmp_path / "mixed"
    d.mkdir()
    for name in ("step_50.pt", "step_000000100.pt", "step_7.pt", "step_x.pt", "step_000000200.pt.corrupt",
                 "step_000000300.tmp"):
        torch.save({"step": checkpoint_step(name) or -1}, d / name)
    assert [p.name for p in list_checkpoints(d)] == ["step_7.pt", "step_50.pt", "step_000000100.pt"]
    assert load_newest_checkpoint(d).state == {"step": 100}
    assert checkpoint_step("step_1000000001.pt") == 1_000_000_001 and checkpoint_step("step_1.pt.corrupt") is None


def test_a_checkpoint_from_before_identities_still_loads(tmp_path):
    ctx = context(tmp_path)
    ctx.checkpoint_dir.mkdir(parents=True)
    torch.save({**state(100), REPORT_KEY: {"step": 100, "metrics": {}, "artifacts": "", "tags": {}, "final": False}},
               ctx.checkpoint_dir / "step_000000100.pt")  # the old format: no identity, one saved report
    ctx.save_checkpoint(state(50), 50)
    assert IDENTITY_KEY in torch.load(ctx.checkpoint_dir / "step_000000050.pt", weights_only=True)
    sent: list[dict] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        loaded = context(tmp_path, sent).load_checkpoint()
    assert loaded["step"] == 100 and set(loaded) == {"model", "step"}
    assert [p["step"] for p in sent] == [100] and FALLBACK_TAG not in sent[0]["tags"]


def test_harness_sample_loads_the_newest_usable_checkpoint_and_refuses_in_one_sentence(tmp_path, monkeypatch):
    import harness.recipes
    from harness.cli.sample import sample_study
    from harness.errors import UserError
    from harness.study.spec import expand_trials, load_study

    study = REPO / "studies" / "classical_generator.yaml"
    t = expand_trials(load_study(study, "smoke", None))[0]
    results = tmp_path / "results"
    ckpts = results / "runs" / t.study / t.config_hash / "checkpoints"
    ctx = TrialContext(t.payload(), {"run_dir": str(ckpts.parent), "cache_dir": str(tmp_path),
                                     "data_root": str(tmp_path)}, [].append)
    for step in (999_999_999, 1_000_000_000):
        ctx.save_checkpoint(state(step), step)
    torch.save({"step": 3, IDENTITY_KEY: HASH_B}, ckpts / "step_1000000003.pt")  # another trial's, copied in
    (ckpts / "step_1000000002.pt").write_bytes(b"garbage")

    seen = []

    def sampler_fn(trial, st, where, n, seed, **kw):
        seen.append(st)
        return [Path(where) / "grid.png"]

    monkeypatch.setattr(harness.recipes.Recipe, "load_sampler_fn", lambda self: sampler_fn)
    lines: list[str] = []
    with pytest.warns(CheckpointWarning):
        sample_study(StudySession(study, "smoke", None, results_dir=results), t.config_hash, 4, 0, echo=lines.append)
    assert seen[0]["step"] == 1_000_000_000 and set(seen[0]) == {"model", "step"}
    assert "step_1000000000" in lines[0]
    assert (ckpts / "step_1000000003.pt").exists()  # only read: moving files aside is the trial's job

    for p in list_checkpoints(ckpts):
        p.write_bytes(b"garbage")
    with pytest.warns(CheckpointWarning), pytest.raises(UserError) as err:
        sample_study(StudySession(study, "smoke", None, results_dir=results), t.config_hash, 4, 0, echo=lines.append)
    msg = str(err.value)
    assert t.config_hash in msg and "can be loaded" in msg and "\n" not in msg


def test_a_study_rerun_resumes_past_a_corrupt_newest_checkpoint(tmp_path):
    """The path a user hits: a trial's newest checkpoint is corrupt (here after the trial finished; the run is then
    marked interrupted), the same study command runs again, and the trial resumes from the previous checkpoint."""
    import ray
    import yaml
    from mlflow.tracking import MlflowClient

    from harness.run.driver import run_study

    study = {
        "name": "ckpt_fallback", "recipe": "null", "datasets": ["synthetic"], "variants": ["null"], "seeds": [0],
        "train": {"steps": 20, "report_every": 5, "checkpoint_every": 5},
        "eval": {"metrics": []},
        "resources": {"workers": 1, "cpus_per_worker": 1.0, "max_concurrent_trials": 1},
        "table": {"kind": "settings", "metric": "loss"},
    }
    path = tmp_path / "ckpt_fallback.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = tmp_path / "results"
    started_ray = not ray.is_initialized()
    try:
        plan = run_study(StudySession(path, tracking_uri=uri, results_dir=results), echo=lambda _s: None)
        assert set(plan.state.values()) == {"done"}
        (h,) = plan.state
        ckpts = results / "runs" / "ckpt_fallback" / h / "checkpoints"
        assert [p.name for p in list_checkpoints(ckpts)] == ["step_000000015.pt", "step_000000020.pt"]
        truncate(ckpts / "step_000000020.pt")
        c = MlflowClient(uri)
        (run,) = c.search_runs([c.get_experiment_by_name("ckpt_fallback").experiment_id],
                               filter_string="tags.`harness.kind` = 'trial'")
        c.set_terminated(run.info.run_id, "KILLED")  # as an interrupted study leaves it

        plan = run_study(StudySession(path, tracking_uri=uri, results_dir=results), echo=lambda _s: None)
        assert set(plan.state.values()) == {"done"}
    finally:
        if started_ray:
            ray.shutdown()
    after = c.get_run(run.info.run_id)  # the same run, continued
    assert after.info.status == "FINISHED"
    tag = after.data.tags[FALLBACK_TAG]
    assert tag.startswith("step_000000020.pt unreadable (") and tag.endswith("; resumed from step 15"), tag
    assert (ckpts / "step_000000020.pt.corrupt").exists()
    assert load_newest_checkpoint(ckpts, h).step == 20  # trained again from 15 to 20
    assert [m.step for m in c.get_metric_history(after.info.run_id, "loss")][-1] == 20
