"""What runs inside a Ray Tune trial: the two execution paths.

- One worker: the recipe runs directly in the Tune trial process, under Accelerate (less fixed cost per trial than
  a one-worker TorchTrainer; see docs/architecture.md, "Two ways a trial runs").
- Several workers (or ``resources.ray_train: always``): the Tune trial is a driver that builds a Ray Train V2
  ``TorchTrainer``; its workers run the same recipe under Accelerate (gloo on CPU, NCCL on GPU) and their rank-0
  reports reach Tune through ``TuneReportCallback`` (Ray >= 2.51; ``Tuner(trainer)`` is deprecated).

Both paths give the recipe a :class:`~harness.training.context.TrialContext`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import DISK_FULL, infrastructure_reason_at
from harness.training.checkpoints import claim_for_data
from harness.training.context import DiskFull, TrialContext, TrialFailed, TrialSkipped

TRAIN_POLL_S = 0.5  # Ray Train controller's worker polling interval (its default: 2 s)


class BackgroundReports:
    """Sends a trial's reports from a background thread, in order. A Tune function trainable's ``tune.report``
    blocks the training thread until the driver asks for the next result, i.e. until the driver has logged the
    previous one to MLflow; Ray Train's ``report`` waits for the controller's next poll of the workers. Both cost
    the training loop measurably (results/bench/README.md, results/bench/overhead.md; docs/architecture.md, "Report
    back-pressure"). With this thread the training loop only enqueues. Every rank
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
        from harness.run.sysmetrics import SystemSampler

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
        # a worker's next report waits for that: polled every 0.5 s, reports at up to 2/s never wait (see
        # results/bench/overhead.md). Propagated by Ray to the controller and the workers.
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
