"""The trial context: a recipe's view of its trial, whichever way the trial runs (in the Tune trial process or as
a Ray Train worker, see ``harness.run.tune_trial``): reporting metrics, saving and loading checkpoints, the
Accelerator, rank and paths.

Checkpoints live in the trial's own directory keyed by its config hash, so rerunning the same study command
continues an interrupted trial from its last checkpoint (docs/conventions.md, "Resume").
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness.training.checkpoints import (
    CHECKPOINTS_KEPT,
    FALLBACK_TAG,
    IDENTITY_KEY,
    REPORT_KEY,
    list_checkpoints,
    load_newest_checkpoint,
)


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
