"""What runs inside a Ray Tune trial: the two execution paths and the context a recipe sees.

- One worker: the recipe runs directly in the Tune trial process, under Accelerate (about 30 s less fixed cost per
  trial than a one-worker TorchTrainer on a 2-core machine; see DESIGN "Trial execution paths").
- Several workers (or ``resources.ray_train: always``): the Tune trial is a driver that builds a Ray Train V2
  ``TorchTrainer``; its workers run the same recipe under Accelerate (gloo on CPU, NCCL on GPU) and their rank-0
  reports reach Tune through ``TuneReportCallback`` (Ray >= 2.51; ``Tuner(trainer)`` is deprecated).

Both paths give the recipe a :class:`TrialContext`: report metrics, save and load checkpoints, an Accelerator.
Checkpoints live in the trial's own directory keyed by its config hash, so rerunning the same study command
continues an interrupted trial from its last checkpoint (CONVENTIONS 10).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness.errors import DISK_FULL, infrastructure_reason_at

CHECKPOINTS_KEPT = 2
TRAIN_POLL_S = 0.5  # Ray Train controller's worker polling interval (its default: 2 s)
# the reports of the last two checkpoint intervals, this one's included: saved with a checkpoint, replayed on resume
REPORT_KEY = "_harness_report"
# the hash of the trial (or shared trained model) a checkpoint belongs to: a checkpoint copied in from another
# trial's directory is refused instead of resumed
IDENTITY_KEY = "_harness_identity"
# MLflow tag saying which checkpoints a (re)start skipped and what it resumed from instead
FALLBACK_TAG = "harness.checkpoint_fallback"
_CHECKPOINT_NAME = re.compile(r"step_(\d+)\.pt")


class TrialFailed(RuntimeError):
    """The recipe gave up on a trial (e.g. a non-finite loss); the message is the reason recorded in MLflow."""


class DiskFull(OSError):
    """A trial stopped because its disk is full: resumable once space is freed (its message says "No space left on
    device", which the driver reads as an interruption, not a failure)."""


class TrialSkipped(RuntimeError):
    """The trial's arm cannot run here (e.g. bitsandbytes without a GPU): recorded as finished, skipped, with the
    reason, so the rest of the study goes on and a rerun does not retry it on the same kind of machine."""


class TrialContext:
    """The recipe's view of its trial: config, paths, rank, reporting and checkpoints."""

    def __init__(
        self,
        trial: dict[str, Any],
        paths: dict[str, str],
        report_fn: Callable[[dict[str, Any]], None],
        rank: int = 0,
        world_size: int = 1,
        cpus: float = 1.0,
    ) -> None:
        self.trial = trial
        self.run_dir = Path(paths["run_dir"])
        self.train_dir = Path(paths.get("train_dir") or paths["run_dir"])
        self.cache_dir = Path(paths["cache_dir"])
        self.data_root = Path(paths["data_root"])
        self.data_hash = paths.get("data_hash", "")
        self.rank = rank
        self.world_size = world_size
        self.cpus = cpus
        self._report_fn = report_fn
        # rank 0's reports since the checkpoint before the previous one, and where the latest interval starts
        self._since_checkpoint: list[dict[str, Any]] = []
        self._interval_start = 0
        self._accelerator = None
        self.started = time.time()
        self.trained_epochs = 0  # epochs (or steps) this process trained, as opposed to restored
        self._data_seconds = 0.0  # time in ``data_wait`` blocks since ``data_wait_share`` last read it
        self._pending_tags: dict[str, str] = {}  # tags for the next payload sent (a checkpoint fallback's)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def set_threads(self) -> None:
        """torch threads = the CPUs this worker owns, so trials side by side do not oversubscribe the cores."""
        import torch

        n = max(1, int(self.cpus))
        torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)

    def accelerator(self, mixed_precision: str = "no", grad_accum: int = 1, compile: bool | None = None):
        """The trial's Accelerator (created once). Under Ray Train the process group already exists. With
        ``compile`` (the train section's key), ``prepare`` compiles the model with torch.compile (inductor)."""
        if self._accelerator is None:
            import torch
            from accelerate import Accelerator

            cpu = not torch.cuda.is_available()
            kwargs: dict[str, Any] = {}
            if compile:
                from accelerate.utils import TorchDynamoPlugin

                # static shapes: a training batch keeps its shape, and inductor's dynamic-shape path failed on the
                # v-diffusion U-Net (torch 2.14, "cannot determine truth value of Relational")
                kwargs["dynamo_plugin"] = TorchDynamoPlugin(backend="inductor", dynamic=False)

            class _Accelerator(Accelerator):
                def unwrap_model(self, model, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = False):
                    """The plain module, compiled or not (Accelerate keeps the compiled wrapper by default):
                    checkpoints, EMA updates and evaluation see the same parameter names with ``compile``."""
                    return super().unwrap_model(model, keep_fp32_wrapper, keep_torch_compile)

            self._accelerator = _Accelerator(
                cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, **kwargs)
        return self._accelerator

    @contextlib.contextmanager
    def data_wait(self):
        """Time the training step spends producing its batch (fetch, conversion, augmentation): the recipe wraps
        that code in this block and reports ``data_wait_share`` (``harness bench data`` reads it)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self._data_seconds += time.perf_counter() - t

    def data_wait_share(self, elapsed: float) -> float:
        """The share of ``elapsed`` seconds (the reporting window) spent in ``data_wait`` blocks; restarts the count."""
        share, self._data_seconds = self._data_seconds / max(elapsed, 1e-9), 0.0
        return min(1.0, share)

    # ------------------------------------------------------------------------------------------------- reporting
    def report(self, step: int, metrics: dict[str, Any], artifacts: list[str] | None = None,
               tags: dict[str, str] | None = None, done: bool = False, checkpoint: dict[str, Any] | None = None):
        """Send metrics (and artifact paths) for ``step`` to the driver. Every rank must call it the same number of
        times: under Ray Train V2 ``report`` is a barrier, and only rank 0's metrics are used.

        ``checkpoint`` (rank 0's training state at ``step``) is saved first with this report and every report sent
        since the checkpoint before the previous one: a process killed before the driver logged them (reports wait in
        Ray's queues until the trial is polled, and die with the process) replays them when it resumes from that
        checkpoint (``load_checkpoint``), so no step before the checkpoint is lost; the driver drops steps it already
        has. Steps after the checkpoint are trained and reported again."""
        # Artifact paths travel as one string: Tune's TensorBoard logger warns on lists, ignores strings.
        payload = {"step": int(step), "metrics": dict(metrics), "artifacts": "\n".join(artifacts or []),
                   "tags": dict(tags or {}), "final": done}
        if self.is_main:  # only rank 0's reports reach the driver
            self._since_checkpoint.append(payload)
            if checkpoint is not None:
                self.save_checkpoint({**checkpoint, REPORT_KEY: list(self._since_checkpoint)}, step)
                # the next checkpoint carries this interval too: a driver more than one interval behind loses nothing
                self._since_checkpoint = self._since_checkpoint[self._interval_start:]
                self._interval_start = len(self._since_checkpoint)
        self._send(payload)

    def _send(self, payload: dict[str, Any]) -> None:
        """Hand ``payload`` to the driver with the pending tags (not saved with checkpoints, so never replayed).
        Never an extra send: every rank sends as many payloads as before (Ray Train's report barrier)."""
        if self._pending_tags:
            payload = {**payload, "tags": {**self._pending_tags, **payload.get("tags", {})}}
            self._pending_tags = {}
        self._report_fn(payload)

    # ----------------------------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        """The training checkpoints: the trial's own, or those of the trained model it shares with other trials."""
        return self.train_dir / "checkpoints"

    @property
    def shares_training(self) -> bool:
        return self.train_dir != self.run_dir

    @contextlib.contextmanager
    def training_lock(self):
        """Held while a trial loads, trains and checkpoints a trained model it may share: the first trial of a
        shared model trains it, the others wait, then find its finished checkpoint and only evaluate. Rank 0 takes
        the file lock and the other ranks wait for it at a barrier (all ranks train together)."""
        if not self.shares_training:
            yield
            return
        from filelock import FileLock

        lock = None
        if self.is_main:
            self.train_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.train_dir / "train.lock"))
            lock.acquire()
        try:
            self._barrier()
            yield
            self._barrier()
        finally:
            if lock is not None:
                lock.release()

    def _barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator().wait_for_everyone()

    @property
    def checkpoint_identity(self) -> str:
        """The hash the checkpoint directory belongs to: the shared trained model's, else the trial's ("" when the
        trial payload has neither, as in some tests: checkpoints are then neither marked nor checked)."""
        return str(self.trial.get("train_hash" if self.shares_training else "config_hash") or "")

    def save_checkpoint(self, state: dict[str, Any], step: int) -> Path | None:
        """Atomically write ``state`` (tensors, numbers, strings, containers), marked with the trial's identity,
        and keep the newest few (by step number)."""
        if not self.is_main:
            return None
        import torch

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        mark = self.checkpoint_dir.parent / "data_hash"
        if self.data_hash and not mark.exists():  # which data these checkpoints belong to (claim_for_data)
            mark.write_text(self.data_hash + "\n")
        if self.checkpoint_identity:
            state = {**state, IDENTITY_KEY: self.checkpoint_identity}
        path = self.checkpoint_dir / f"step_{step:09d}.pt"
        tmp = path.with_suffix(".tmp")
        try:
            torch.save(state, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
            raise
        os.replace(tmp, path)  # a kill mid-write leaves only a .tmp, never a truncated checkpoint
        for old in list_checkpoints(self.checkpoint_dir)[:-CHECKPOINTS_KEPT]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, required: Iterable[str] = ()) -> dict[str, Any] | None:
        """The newest usable checkpoint, loaded with ``weights_only=True``; None when the trial starts fresh. A
        report saved with it (``report(checkpoint=...)``) is sent again here: every rank loads, so every rank
        replays.

        A checkpoint that cannot be loaded, is not a dict with the ``required`` keys, or belongs to another trial
        is skipped for the one before it (see :func:`load_newest_checkpoint`): rank 0 moves it aside and warns,
        the other ranks skip the same files, so all ranks resume from the same one. The fallback is recorded on
        the trial's MLflow run (``FALLBACK_TAG``) with the next payload sent."""
        found = load_newest_checkpoint(self.checkpoint_dir, self.checkpoint_identity, required,
                                       move_aside=self.is_main, warn=self.is_main)
        if found.refused:
            outcome = f"resumed from step {found.step}" if found.path else "retrained from scratch"
            self._pending_tags[FALLBACK_TAG] = f"{found.describe()}; {outcome}"
        if found.state is None:
            return None
        saved = found.reports
        if saved is not None and not self.shares_training:
            for payload in [saved] if isinstance(saved, dict) else saved:  # one report: checkpoints of before
                self._send(payload)
        return found.state


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (unreadable, not a checkpoint, or another trial's) and moved aside."""


def checkpoint_step(path: str | Path) -> int | None:
    """The step in a checkpoint's name (``step_<digits>.pt``, any padding); None for any other name."""
    m = _CHECKPOINT_NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoints in ``directory``, oldest first by step number (names sort wrongly past 9 digits). Files
    moved aside (``.corrupt``, ``.foreign``) and a ``.tmp`` left by a kill mid-write are not checkpoints."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = ((checkpoint_step(p), p) for p in directory.glob("step_*.pt"))
    return [p for step, p in sorted((s, p) for s, p in steps if s is not None)]


@dataclasses.dataclass
class LoadedCheckpoint:
    """What :func:`load_newest_checkpoint` found: the checkpoint used (None: none usable), its state without the
    harness's own keys, the reports saved with it, and the newer files refused, newest first, with the reason."""

    path: Path | None
    state: dict[str, Any] | None
    reports: Any = None
    refused: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    @property
    def step(self) -> int | None:
        return checkpoint_step(self.path) if self.path is not None else None

    def describe(self) -> str:
        """The refused files and why, e.g. ``step_000000200.pt unreadable (EOFError: ...)``."""
        return "; ".join(f"{p.name} {why}" for p, why in self.refused)


def _reason(e: BaseException) -> str:
    """An exception in one short line: its first sentence; for torch's weights-only refusal, what it refused."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        text = "weights-only load refused: " + text.split("WeightsUnpickler error:", 1)[1].strip()
    elif text.startswith("Weights only load failed"):
        parts = [p.strip() for p in text.split("\n\n") if p.strip()]
        text = "weights-only load refused: " + (parts[1] if len(parts) > 1 else parts[0])
    line = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""
    if len(line) > 160:
        line = line[:157] + "..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def load_newest_checkpoint(directory: str | Path, identity: str = "", required: Iterable[str] = (),
                           move_aside: bool = True, warn: bool = True) -> LoadedCheckpoint:
    """The newest checkpoint in ``directory`` that can be used, trying them newest first (by step number).

    One is refused when ``torch.load(weights_only=True)`` fails (truncated or garbage file, a pickle of anything
    but tensors and containers), when it is not a dict with string keys and every ``required`` key, or when it
    is marked with another identity than ``identity`` (a checkpoint without a mark, from before marks were
    written, is accepted; so is any checkpoint when ``identity`` is ""). With ``move_aside``, a refused file is
    renamed to ``<name>.corrupt`` or ``<name>.foreign``, so globbing and pruning never see it again; with
    ``warn``, a :class:`CheckpointWarning` names it and the reason."""
    import torch

    required = tuple(required)
    refused: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(directory)):
        why, suffix = "", ".corrupt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - whatever the file holds, it is not a usable checkpoint
            why = f"unreadable ({_reason(e)})"
        else:
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                why = f"not a checkpoint (a {type(state).__name__}, not a dict of named entries)"
            elif missing := [k for k in required if k not in state]:
                why = f"not a checkpoint of this recipe (no {', '.join(missing)})"
            elif identity and state.get(IDENTITY_KEY, identity) != identity:
                why, suffix = f"from another trial ({str(state[IDENTITY_KEY])[:40]}, not {identity})", ".foreign"
        if not why:
            reports = state.pop(REPORT_KEY, None)
            state.pop(IDENTITY_KEY, None)
            return LoadedCheckpoint(path, state, reports, refused)
        refused.append((path, why))
        aside = ""
        if move_aside:
            target = path.with_name(path.name + suffix)
            try:
                os.replace(path, target)
                aside = f", moved aside to {target.name}"
            except OSError:  # gone already (another process moved it) or read-only: skipped all the same
                pass
        if warn:
            warnings.warn(f"skipped checkpoint {path}: {why}{aside}", CheckpointWarning, stacklevel=3)
    return LoadedCheckpoint(None, None, None, refused)


# ---------------------------------------------------------------------------------------------- Ray entry points
class BackgroundReports:
    """Sends a trial's reports from a background thread, in order. A Tune function trainable's ``tune.report``
    blocks the training thread until the driver asks for the next result, i.e. until the driver has logged the
    previous one to MLflow: 20 ms per report on this kind of machine (``harness bench overhead``), 2% of training
    time at one report per second; Ray Train's ``report`` waits for the controller's next poll of the workers
    (0.45 s on average at one report per second). With this thread the training loop only enqueues. Every rank
    sends as many reports as before, so Ray Train's report barrier still lines them up. The final report (and
    ``close``) waits for everything queued, so a trial's function never returns before its reports are sent; an
    error sending one is raised in the training thread at its next report."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        import queue
        import threading

        self._send = send
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="harness-reports", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is None:
                    return
                if self._error is None:  # after an error (or Tune's stop) the rest is dropped, never sent out of order
                    self._send(payload)
            except BaseException as e:  # noqa: BLE001 - including Tune's SystemExit when it stops the trial
                self._error = e
            finally:
                self._queue.task_done()

    def __call__(self, payload: dict[str, Any]) -> None:
        self._raise()
        self._queue.put(payload)
        if payload.get("final"):
            self.flush()

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._queue.join()
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def _where() -> dict[str, str]:
    """Tags saying where this process runs: the Ray node (id and IP) and the process id."""
    import ray

    rc = ray.get_runtime_context()
    return {"harness.node_id": rc.get_node_id(), "harness.node_ip": ray.util.get_node_ip_address(),
            "harness.pid": str(os.getpid())}


def _run_recipe(config: dict[str, Any], send, rank: int, world_size: int) -> None:
    """Run the trial's recipe in this process, its reports sent through :class:`BackgroundReports` by ``send``."""
    from harness.recipes import get_recipe

    report_fn = reports = BackgroundReports(send)

    trial = config["trial"]
    where = _where()
    first = True
    sampler = None
    if rank == 0:
        from harness.sysmetrics import SystemSampler

        sampler = SystemSampler()

    def report(payload: dict[str, Any]) -> None:
        nonlocal first
        if first:  # the first report of each (re)start says where the trial runs
            payload = {**payload, "tags": {**where, **payload.get("tags", {})}}
            first = False
        if sampler is not None:  # CPU/GPU utilisation and memory since the previous report
            payload = {**payload, "metrics": {**payload.get("metrics", {}), **sampler.take()}}
        report_fn(payload)

    ctx = TrialContext(trial, config["paths"], report, rank, world_size, config["resources"]["cpus_per_worker"])
    ctx.set_threads()
    fn = get_recipe(trial["recipe"]).load_trial_fn()
    failure = ctx.run_dir / "failure.txt"
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    # Which process trains this trial now, per rank (operators, and the killed-worker test, read it).
    (ctx.run_dir / f"worker-{rank}.pid").write_text(f"{os.getpid()} {where['harness.node_ip']}\n")
    if ctx.is_main:
        failure.unlink(missing_ok=True)
    try:
        fn(trial, ctx)
    except TrialSkipped as e:
        ctx.report(0, {}, tags={"harness.skipped": str(e)}, done=True)
    except Exception as e:
        if infrastructure_reason_at(e, ctx.run_dir) == DISK_FULL:  # the machine's fault: the driver closes it KILLED
            raise DiskFull(f"No space left on device under {ctx.run_dir} ({type(e).__name__}: {e})") from e
        if ctx.is_main:  # the reason the driver records in MLflow and the table
            failure.write_text(str(e) if isinstance(e, TrialFailed) else f"{type(e).__name__}: {e}")
        raise
    finally:
        reports.close()  # what the trial reported before failing still reaches the driver
        if sampler is not None:
            sampler.close()


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker loop: the recipe with reports through ``ray.train.report``."""
    import ray.train

    tc = ray.train.get_context()
    _run_recipe(config, lambda m: ray.train.report(m), tc.get_world_rank(), tc.get_world_size())


def claim_for_data(directory: Path, data_hash: str) -> None:
    """Checkpoints in ``directory`` belong to the data they were trained on (``data_hash`` file, written with the
    first checkpoint): when this trial's data (same config, e.g. another data.root) has another fingerprint, the
    old checkpoints move aside to checkpoints-data-<old> instead of being resumed. Directories from before
    fingerprints were recorded are taken as they are."""
    if not data_hash:
        return
    mark = directory / "data_hash"
    old = mark.read_text().strip() if mark.is_file() else ""
    ckpt = directory / "checkpoints"
    if old and old != data_hash and ckpt.exists():
        with contextlib.suppress(FileNotFoundError):  # a trial sharing the directory moved them first
            ckpt.rename(directory / f"checkpoints-data-{old}")
            mark.unlink()  # the next checkpoint saved here writes the new fingerprint


def tune_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: the recipe directly (one worker) or through a TorchTrainer (several workers)."""
    from ray import tune

    config = config["cfg"]  # Tune's param space is {"cfg": grid_search([...])}
    for directory in {config["paths"]["run_dir"], config["paths"]["train_dir"]}:  # before any worker loads one
        claim_for_data(Path(directory), config["paths"].get("data_hash", ""))
    res = config["resources"]
    if res["workers"] > 1 or res["ray_train"] == "always":
        import ray.train
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        # Ray Train's controller takes one report per worker each time it polls them, every 2 s by default, and
        # a worker's next report waits for that: polled every 0.5 s, reports at up to 2/s never wait (measured by
        # `harness bench overhead`). Propagated by Ray to the controller and the workers.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(TRAIN_POLL_S))
        use_gpu = res["gpus_per_worker"] > 0
        per_worker = {"CPU": res["cpus_per_worker"]}
        if use_gpu:
            per_worker["GPU"] = res["gpus_per_worker"]
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=res["workers"], use_gpu=use_gpu, resources_per_worker=per_worker
            ),
            run_config=ray.train.RunConfig(
                name=f"train-{config['trial_hash']}",
                storage_path=config["paths"]["ray_storage"],
                callbacks=[TuneReportCallback()],
                failure_config=ray.train.FailureConfig(max_failures=res["max_failures"]),
            ),
        )
        trainer.fit()
    else:
        _run_recipe(config, tune.report, 0, 1)
