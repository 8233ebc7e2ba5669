"""Checks made before anything runs: the data each dataset needs (and its fingerprint), the resources each trial
needs of this machine (before a private Ray starts) or of the cluster (once joined), and, on a multi-node cluster,
storage every node shares. A check that fails ends the command in one sentence, before a run is opened in MLflow,
saying what the profile asks for, everything that is missing, and the command of a profile that runs here."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError, study_command
from harness.run.estimate import (  # noqa: F401 - TRAIN_DRIVER_CPU and trial_cpus are this module's interface too
    TRAIN_DRIVER_CPU,
    describe_profile,
    estimate_total,
    estimate_trials,
    machine_cpus,
    trial_cpus,
)
from harness.study.spec import LoadedStudy, Trial, expand_trials, load_study


def _study_data(loaded: LoadedStudy) -> tuple[Callable[..., Any], dict[str, Any], list[str]]:
    """(the study's data loader, its data section with the absolute root, every dataset of every substudy)."""
    from harness.recipes import get_recipe

    load = get_recipe(loaded.study.recipe).load_data_fn()
    data = {**dataclasses.asdict(loaded.study.data), "root": str(loaded.data_root())}
    return load, data, list(dict.fromkeys(d for _, sub in loaded.substudies for d in sub.datasets))


def _load_data(loaded: LoadedStudy, download: bool | None = None) -> tuple[dict[str, str], list[UserError]]:
    """Load each dataset's training split once: (content fingerprints of those that loaded, the errors of those that
    did not), so every missing dataset is named at once."""
    load, data, names = _study_data(loaded)
    download = loaded.study.data.download if download is None else download
    hashes, missing = {}, []
    for name in names:
        try:
            hashes[name] = load(name, data, "train", download=download).content_hash()[:16]
        except UserError as e:
            missing.append(e)
    return hashes, missing


def _check_data(loaded: LoadedStudy) -> dict[str, str]:
    """Load each dataset's training split once so missing data fails before any run is created; returns each
    dataset's content fingerprint. The config hash leaves out where data lives (data.root), so the fingerprint is
    what tells a trial trained on other files (or on generated stand-ins) apart: runs record it, and a run with
    another fingerprint does not count as this trial's."""
    hashes, missing = _load_data(loaded)
    if missing:
        raise missing[0]
    return hashes


def _data_hashes_if_available(loaded: LoadedStudy) -> dict[str, str] | None:
    """Fingerprints for commands that only read the store (status, table, compare, --dry-run): without the data
    they cannot tell runs on other data apart, and say so in a warning instead of failing."""
    try:
        return _check_data(loaded)
    except UserError as e:
        print(f"warning: {e} (runs are not told apart by the data they used)", file=sys.stderr)
        return None


# ------------------------------------------------------------------------------------- what a trial needs of whom
@dataclass(frozen=True)
class Capacity:
    """The CPUs and GPUs trials can have: this machine's (a private local Ray gets them all) or a cluster's."""

    cpus: float
    gpus: float
    nodes: tuple[tuple[float, float], ...]  # (CPUs, GPUs) of each node
    where: str  # "this machine", "the Ray cluster"


def local_capacity() -> Capacity:
    """This machine as a private local Ray instance sees it: Ray's CPU count and torch's CUDA devices."""
    import torch

    cpus, gpus = machine_cpus(), float(torch.cuda.device_count())
    return Capacity(cpus, gpus, ((cpus, gpus),), "this machine")


def cluster_capacity() -> Capacity:
    """The joined (or started) Ray cluster's resources; ray.init must have run."""
    import ray

    total = ray.cluster_resources()
    nodes = tuple((n.get("Resources", {}).get("CPU", 0.0), n.get("Resources", {}).get("GPU", 0.0))
                  for n in ray.nodes() if n.get("Alive"))
    return Capacity(total.get("CPU", 0.0), total.get("GPU", 0.0), nodes, "the Ray cluster")


def shortfalls(res, cap: Capacity) -> list[str]:
    """What one trial asks for that ``cap`` cannot give, in words ([] when it fits): Tune would wait forever."""
    out = []
    need_cpu = trial_cpus(res)
    if need_cpu > cap.cpus + 1e-9:
        driver = " + the Train driver" if res.uses_train else ""
        out.append(f"a trial needs {need_cpu:g} CPUs (resources.workers={res.workers} x cpus_per_worker="
                   f"{res.cpus_per_worker:g}{driver}) but {cap.where} has {cap.cpus:g}")
    need_gpu = res.workers * res.gpus_per_worker
    if need_gpu > cap.gpus + 1e-9:
        out.append(f"a trial needs {need_gpu:g} GPU{'s' if need_gpu != 1 else ''} (resources.workers x "
                   f"gpus_per_worker) but {cap.where} has {cap.gpus:g}")
    if not out and not any(c >= res.cpus_per_worker and g >= res.gpus_per_worker for c, g in cap.nodes):
        out.append(f"no node of {cap.where} has {res.cpus_per_worker:g} CPUs and {res.gpus_per_worker:g} GPUs for one "
                   "worker (resources.cpus_per_worker, gpus_per_worker)")
    return out


@dataclass
class MachineCheck:
    """What a study's profile needs that is missing: datasets, and the resources one trial needs of ``capacity``
    (None: not known yet, on a cluster not yet joined). ``data_hashes``: the fingerprints of the data that is here."""

    session: Any  # harness.run.session.StudySession
    trials: list[Trial]
    data_hashes: dict[str, str]
    missing: list[UserError]
    capacity: Capacity | None
    short: list[str] = field(default_factory=list)
    address: str | None = None  # --address as given, for the commands the message prints

    def error(self) -> UserError:
        """One sentence: what the profile asks for, everything missing, and the commands of the profiles that run
        here (or there, on a cluster)."""
        loaded = self.session.loaded
        total = estimate_total(loaded, estimate_trials(loaded, self.trials, measure=False),
                               self.capacity.cpus if self.capacity else None)
        where = self.capacity.where if self.capacity else "this machine"
        lacks = [_one_clause(str(e)) for e in self.missing] + self.short
        remedy = _remedy(self.session, self.capacity, self.address, bool(self.short)) if self.capacity else ""
        return UserError(f"{describe_profile(loaded, self.trials, total)}, more than {where} has: "
                         f"{'; '.join(lacks)}{'; ' + remedy if remedy else ''}")


def check_machine(session, trials: list[Trial], address: str | None = None) -> MachineCheck:
    """Everything the profile needs that can be checked before Ray starts: every dataset of every substudy (loaded
    once, fingerprinted), and, when the study will start a private local Ray (no --address, no RAY_ADDRESS), the
    CPUs and GPUs per trial against this machine's."""
    loaded = session.loaded
    hashes, missing = _load_data(loaded)
    local = not (address or os.environ.get("RAY_ADDRESS"))
    cap = local_capacity() if local else None
    short = shortfalls(loaded.study.resources, cap) if cap else []
    return MachineCheck(session, trials, hashes, missing, cap, short, address)


def _one_clause(text: str) -> str:
    """A sentence as an item of a ';'-joined list: its own ';' become ','."""
    return text.strip().rstrip(".").replace("; ", ", ")


# ------------------------------------------------------------------------------------------- the profiles that fit
def _profile_command(session, profile: str, sets: dict[str, Any], address: str | None = None) -> str:
    """The `harness study` line for ``profile`` with ``sets``, the study path as typed, the same store and results
    folder, and the cluster address; quoted so it runs as printed."""
    return "`" + study_command("study", session.path, profile, sets, session.tracking_uri, session.results_dir,
                               *(["--address", address] if address else [])) + "`"


class _Fits:
    """Whether a profile of the study, with some --set values, runs on ``cap``: it loads and expands (budgets,
    memory), one trial fits the resources, and its data is here (without downloading); data checks are cached."""

    def __init__(self, path: Any, cap: Capacity) -> None:
        self.path, self.cap = path, cap
        self._data: dict[str, bool] = {}

    def __call__(self, profile: str, sets: dict[str, Any]) -> bool:
        try:
            loaded = load_study(self.path, profile, sets)
            expand_trials(loaded)
        except UserError:
            return False
        if shortfalls(loaded.study.resources, self.cap):
            return False
        load, data, names = _study_data(loaded)
        return all(self._have(load, name, data) for name in names)

    def _have(self, load: Callable[..., Any], name: str, data: dict[str, Any]) -> bool:
        key = json.dumps([getattr(load, "__qualname__", str(load)), name, data], sort_keys=True, default=str)
        if key not in self._data:
            try:
                load(name, data, "train", download=False)
                self._data[key] = True
            except (UserError, OSError, ValueError):  # missing or unreadable here: not a profile that runs here
                self._data[key] = False
        return self._data[key]


def runnable_profiles(session, cap: Capacity, address: str | None = None) -> list[str]:
    """Commands of the study's other profiles that run on ``cap``, each with the user's --set values that still
    apply (kept in order while the profile still fits with them)."""
    loaded = session.loaded
    sets = dict(session.sets or {})
    fits = _Fits(session.path, cap)
    out = []
    for profile in loaded.study.profiles:
        if profile == loaded.profile:
            continue
        kept = sets
        if not fits(profile, sets):
            if not fits(profile, {}):
                continue
            kept = {}
            for key, value in sets.items():
                if fits(profile, {**kept, key: value}):
                    kept[key] = value
        out.append(_profile_command(session, profile, kept, address))
    return out


def _remedy(session, cap: Capacity, address: str | None, resources: bool) -> str:
    commands = runnable_profiles(session, cap, address if cap.where != "this machine" else None)
    here = "here" if cap.where == "this machine" else "there"
    if commands:
        return f"runs {here}: {' or '.join(commands)}"
    hint = " (lower resources.cpus_per_worker, gpus_per_worker or workers with --set)" if resources else ""
    return f"none of the study's profiles runs {here}{hint}"


def check_cluster(address: str | None, rdir: Path, loaded: LoadedStudy, session=None) -> None:
    """Join (or start) Ray, then check what the study's trials need of it; before any run is opened, so an
    unreachable cluster or unshared storage leaves no run. ``session`` (the command's) lets a refusal name the
    profiles that fit the cluster."""
    _ray_init(address)
    if address or os.environ.get("RAY_ADDRESS"):
        check_shared_storage(rdir, loaded.data_root())
    _check_fits(loaded.study.resources, session, address)


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


def _check_fits(res, session=None, address: str | None = None) -> None:
    """A trial that asks for more than the cluster has would wait for resources forever: refuse it, with the
    profiles that fit the cluster when the command's ``session`` is known."""
    cap = cluster_capacity()
    short = shortfalls(res, cap)
    if not short:
        return
    if session is None:
        raise UserError(f"{'; '.join(short)}: lower resources.cpus_per_worker (fractions are allowed), "
                        "gpus_per_worker or workers.")
    raise UserError(f"{'; '.join(short)}: lower resources.cpus_per_worker (fractions are allowed), gpus_per_worker "
                    f"or workers; {_remedy(session, cap, address, True)}")


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

