"""Checks made before anything runs: the data each dataset needs (and its fingerprint), the Ray cluster (reachable,
large enough for one trial) and, on a multi-node cluster, storage every node shares. A check that fails ends the
command in one sentence, before a run is opened in MLflow."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from harness.errors import UserError
from harness.study.spec import LoadedStudy

TRAIN_DRIVER_CPU = 0.01  # a Tune trial that only drives a TorchTrainer; its workers hold the real resources


def _check_data(loaded: LoadedStudy) -> dict[str, str]:
    """Load each dataset's training split once so missing data fails before any run is created; returns each
    dataset's content fingerprint. The config hash leaves out where data lives (data.root), so the fingerprint is
    what tells a trial trained on other files (or on generated stand-ins) apart: runs record it, and a run with
    another fingerprint does not count as this trial's."""
    from harness.recipes import get_recipe

    load = get_recipe(loaded.study.recipe).load_data_fn()
    data = {**dataclasses.asdict(loaded.study.data), "root": str(loaded.data_root())}
    return {name: load(name, data, "train", download=loaded.study.data.download).content_hash()[:16]
            for name in dict.fromkeys(d for _, sub in loaded.substudies for d in sub.datasets)}


def _data_hashes_if_available(loaded: LoadedStudy) -> dict[str, str] | None:
    """Fingerprints for commands that only read the store (status, table, compare, --dry-run): without the data
    they cannot tell runs on other data apart, and say so in a warning instead of failing."""
    try:
        return _check_data(loaded)
    except UserError as e:
        print(f"warning: {e} (runs are not told apart by the data they used)", file=sys.stderr)
        return None


def check_cluster(address: str | None, rdir: Path, loaded: LoadedStudy) -> None:
    """Join (or start) Ray, then check what the study's trials need of it; before any run is opened, so an
    unreachable cluster or unshared storage leaves no run."""
    _ray_init(address)
    if address or os.environ.get("RAY_ADDRESS"):
        check_shared_storage(rdir, loaded.data_root())
    _check_fits(loaded.study.resources)


def trial_cpus(res) -> float:
    """CPUs one trial holds: its workers, plus the Train driver when it runs as a TorchTrainer."""
    return res.cpus_per_worker * res.workers + (TRAIN_DRIVER_CPU if res.uses_train else 0.0)


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) cluster address must accept a TCP connection within ``timeout``
    seconds; ray.init would otherwise keep retrying for minutes. ``auto`` and ``local`` are left to Ray."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): start it with "
                        "`ray start --head` on the head node, or fix --address / RAY_ADDRESS.") from None


def _ray_init(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        else:
            # "local": a private instance for this study. Without it ray.init joins the cluster recorded by `ray
            # start` on this machine (someone else's, possibly running another checkout's Python), and a stale record
            # of a dead one makes it retry for minutes.
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None


def _check_fits(res) -> None:
    """A trial that asks for more than the cluster has would wait for resources forever: refuse it."""
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    need_cpu = trial_cpus(res)
    if need_cpu > total.get("CPU", 0) + 1e-9:
        driver = " + the Train driver" if res.uses_train else ""
        raise UserError(f"a trial needs {need_cpu:g} CPUs (resources.workers={res.workers} x cpus_per_worker="
                        f"{res.cpus_per_worker:g}{driver}) but the Ray cluster has "
                        f"{total.get('CPU', 0):g}: lower resources.cpus_per_worker (fractions are allowed) or workers.")
    if res.workers * res.gpus_per_worker > total.get("GPU", 0) + 1e-9:
        raise UserError(f"a trial needs {res.workers * res.gpus_per_worker:g} GPUs (resources.workers x "
                        f"gpus_per_worker) but the Ray cluster has {total.get('GPU', 0):g}.")
    if not any(n.get("CPU", 0) >= res.cpus_per_worker and n.get("GPU", 0) >= res.gpus_per_worker for n in nodes):
        raise UserError(f"no Ray node has {res.cpus_per_worker:g} CPUs and {res.gpus_per_worker:g} GPUs for one worker "
                        "(resources.cpus_per_worker, gpus_per_worker).")


def _probe(path: str, data_root: str) -> tuple[str | None, bool]:
    """On one node: the token file's content (None if it is not there) and whether the data root exists."""
    try:
        token = Path(path).read_text()
    except OSError:
        token = None
    return token, Path(data_root).exists()


def check_shared_storage(rdir: Path, data_root: Path, probe=None) -> None:
    """On a multi-node cluster every node writes checkpoints and sample grids under the results directory and the
    driver logs them to MLflow, so the directory must be the same shared filesystem everywhere, and the data root
    must exist on every node where the driver has it. A token file written here is read back by a task pinned to
    each alive node."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = probe or ray.remote(num_cpus=0)(_probe)
    rdir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    path = rdir / f".shared-storage-check-{token}"
    path.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(path), str(data_root)) for n in nodes]
        answers = ray.get(refs, timeout=120)
    finally:
        path.unlink(missing_ok=True)
    unshared = [n["NodeManagerAddress"] for n, (got, _) in zip(nodes, answers) if got != token]
    if unshared:
        raise UserError(f"the results directory {rdir} is not shared with the Ray node(s) at "
                        f"{', '.join(unshared)}: put --results-dir on a filesystem every node mounts at the same "
                        "path (e.g. NFS), since trials write checkpoints and samples there for the driver to log.")
    # Only a data root the driver has is needed (made and package datasets read no files).
    no_data = [n["NodeManagerAddress"] for n, (_, ok) in zip(nodes, answers) if not ok and data_root.exists()]
    if no_data:
        raise UserError(f"the data root {data_root} does not exist on the Ray node(s) at {', '.join(no_data)}: "
                        "put the datasets on a shared filesystem or copy them to the same path on every node.")

