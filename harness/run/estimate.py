"""What a study's trials cost, estimated before anything runs: training and evaluation FLOPs from the zoo's analytic
forward FLOPs per sample, the minutes they take on this machine from a rate measured here (or recorded by finished
runs of the same trial), and GPU-hours at the profile's scale on a stated accelerator. `harness study --dry-run`
prints them and the pre-flight uses the GPU-hours; every figure is labelled an estimate and says where its rate
came from.

Per trial: training FLOPs = TRAIN_FACTOR x forward FLOPs x samples trained on (steps x batch, or epochs x the
training split's size; ``grad_accum`` adds none, since each step of the training skeleton draws one batch), plus
what its evaluations cost: the samples drawn (n x the sampler's model evaluations, twice per step under classifier-
free guidance), the validation split for classifiers, and Inception-v3 features for FID/KID. A trial whose model
another trial trains (a shared ``train_hash``) only evaluates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.study.spec import LoadedStudy, Trial

TRAIN_DRIVER_CPU = 0.01  # a Tune trial that only drives a TorchTrainer; its workers hold the real resources

# A training step costs about three forwards: the forward, and two products per weight in the backward.
TRAIN_FACTOR = 3.0
# The GAN's step: the generator forward twice (one for the discriminator's step, one for its own, with backward) and
# the discriminator forward + backward on real, fake and generated images: 4 G + 9 D forward-equivalents, taken as
# 6.5 (G + D), the networks being of similar cost (the zoo counts G + D per sample).
GAN_TRAIN_FACTOR = 6.5

# GPU-hours at the profile's scale: FLOPs / (the accelerator's dense peak at the trial's precision x utilisation).
# fp32 is the plain fp32 peak: the harness leaves torch's TF32 matmuls off.
ACCELERATOR = "A100"
PEAK_FLOPS = {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}
UTILISATION = 0.40
PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}  # train.mixed_precision -> PEAK_FLOPS key

INCEPTION_GFLOPS = 5.7  # Inception-v3's forward on one 299x299 image (FID/KID features)
ODE_NFE = 300  # the score recipe's adaptive RK45 sampler: a nominal count (it depends on the model)
HELD_OUT_DENOISE = 512 * 5  # EDM's held-out denoising loss: 512 images at 5 noise levels per evaluation

# Split sizes of datasets the harness reads from files, for when their files are not here (an estimate for a machine
# that will have them): (train, test).
NOMINAL_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "mnist": (60_000, 10_000),
                 "fashion_mnist": (60_000, 10_000), "artbench10": (50_000, 10_000)}

# The measured rate: a few forward + backward passes of each distinct model at a small batch, on one thread. The batch
# is sized so a pass is about PASS_FLOPS (at most the trial's batch, at least 2 where batch norm needs it); per model,
# after one warm-up, up to MAX_TIMED passes are timed while the model has had less than MODEL_BUDGET_S, and the
# fastest counts (other processes only slow a pass down). One thread, because on a busy machine (a shared laptop, the
# test suite beside it) a multi-threaded pass waits on its slowest thread and took 10x longer than on one, breaking
# both the figure and the dry run's time; a trial with k CPUs is taken to run k times as fast (said in the label).
# Past MEASURE_BUDGET_S for the whole call, models reuse the rate measured for the closest model of their family.
PASS_FLOPS = 4e9
MODEL_BUDGET_S = 1.0
MEASURE_BUDGET_S = 8.0
MAX_TIMED = 2


def trial_cpus(res) -> float:
    """CPUs one trial holds: its workers, plus the Train driver when it runs as a TorchTrainer."""
    return res.cpus_per_worker * res.workers + (TRAIN_DRIVER_CPU if res.uses_train else 0.0)


def gpu_label(precisions: Iterable[str] = ("fp32",)) -> str:
    """The GPU-hours' basis in words, e.g. "A100 fp32 19.5 TFLOP/s at 40% utilisation"."""
    peaks = ", ".join(f"{p} {PEAK_FLOPS[p] / 1e12:g}" for p in sorted(set(precisions)) or ["fp32"])
    return f"{ACCELERATOR} {peaks} TFLOP/s at {UTILISATION:.0%} utilisation"


@dataclass(frozen=True)
class TrialEstimate:
    """One trial's estimated cost. ``rate`` is FLOP/s on this machine (None: not measured) and ``rate_source`` says
    where it came from; ``note`` says why a trial trains nothing (another trial trains its model, or it is skipped)."""

    config_hash: str
    train_samples: int  # samples trained on (forward + backward)
    eval_passes: int  # model forwards of one sample in all the trial's evaluations
    train_flops: float
    eval_flops: float  # the model's evaluation forwards plus feature extraction
    precision: str  # PEAK_FLOPS key
    note: str = ""
    rate: float | None = None
    rate_source: str = ""

    @property
    def flops(self) -> float:
        return self.train_flops + self.eval_flops

    @property
    def gpu_hours(self) -> float:
        return self.flops / (PEAK_FLOPS[self.precision] * UTILISATION) / 3600

    @property
    def minutes(self) -> float | None:
        """Minutes on this machine at ``rate``; None when no rate was measured."""
        if not self.flops:
            return 0.0
        return self.flops / self.rate / 60 if self.rate else None


@dataclass(frozen=True)
class EstimateTotal:
    """A study's trials together: FLOPs, GPU-hours, and on this machine the trial-minutes summed and the wall
    minutes with ``slots`` trials at once (longest first, as the driver orders them)."""

    trials: int
    flops: float
    gpu_hours: float
    gpu_basis: str
    trial_minutes: float | None  # None when some trial's rate could not be measured
    wall_minutes: float | None
    slots: int  # trials at once on this machine's CPUs
    cpus: float  # this machine's
    need_cpus: float  # one trial's
    sources: tuple[str, ...]  # where the rates came from ("measured here", "recorded")

    def describe(self) -> str:
        """The totals in two lines, labelled an estimate."""
        head = (f"estimate, all {self.trials} trials: {_number(self.flops / 1e15)} PFLOP, {_number(self.gpu_hours)} "
                f"GPU-hours at the profile's scale ({self.gpu_basis})")
        if self.trial_minutes is None:
            return head + "; minutes on this machine: not measured"
        here = (f"on this machine ({_cores(self.cpus)}; rates {' and '.join(self.sources) or 'none needed'}): "
                f"{_number(self.trial_minutes)} trial-minutes, ")
        if self.need_cpus > self.cpus + 1e-9:
            here += (f"wall {_number(self.wall_minutes)} minutes one trial at a time, though a trial needs "
                     f"{self.need_cpus:g} CPUs and would not start here")
        else:
            here += f"wall {_number(self.wall_minutes)} minutes with {self.slots} trial(s) at once"
        return f"{head}\n{here}"


def _number(x: float | None) -> str:
    """Three significant digits, whole numbers from 100 on (thousands separated)."""
    if x is None:
        return "?"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _cores(cpus: float) -> str:
    return f"{cpus:g} CPU{'s' if cpus != 1 else ''}"


# ------------------------------------------------------------------------------------------------- the FLOPs
def _evaluations(steps: int, every: int) -> int:
    """Evaluations of a step-counted recipe: every ``every`` steps and at the last (harness.training.loop)."""
    return steps // every + (1 if steps % every else 0)


def _features(t: Trial, images: int) -> float:
    """FLOPs of the feature extractor over ``images``: Inception-v3 for FID/KID (the classifier extractor is small)."""
    if not {"fid", "kid"} & set(t.eval.get("metrics") or ()) or t.eval.get("extractor") != "inception":
        return 0.0
    return images * INCEPTION_GFLOPS * 1e9


def _guided(t: Trial, weight: Any) -> int:
    """Model evaluations per sampler step: two (conditional and unconditional) under classifier-free guidance."""
    return 2 if weight and t.model.get("num_classes") else 1


class _Sizes:
    """Split sizes, read from the data where it is here (without downloading), else the nominal sizes; cached."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def __call__(self, t: Trial, split: str) -> int:
        key = json.dumps([t.recipe, t.dataset, t.data, split], sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = self._read(t, split)
        return self._cache[key]

    @staticmethod
    def _read(t: Trial, split: str) -> int:
        from harness.errors import UserError
        from harness.recipes import get_recipe

        try:
            return len(get_recipe(t.recipe).load_data_fn()(t.dataset, t.data, split, download=False))
        except (UserError, OSError, ValueError, RuntimeError):
            train, test = NOMINAL_SIZES.get(t.dataset, (0, 0))
            limit = t.data.get("limit") if split == "train" else None
            return min(train, limit) if limit else (train if split == "train" else test)


def _work(t: Trial, size: Callable[[Trial, str], int]) -> tuple[int, int, float, float]:
    """(samples trained on, model forwards in evaluations, training FLOPs factor, feature-extraction FLOPs) of one
    trial, from its recipe's train and eval sections (harness/recipes/*_config.py)."""
    tr, ev = t.train, t.eval
    draws = int(ev.get("sampling_seeds") or 1)  # image generators: each evaluation samples n images this many times
    n, steps_per = int(ev.get("n_samples") or 0), int(ev.get("sampler_steps") or 0)
    if t.recipe in ("edm", "vdiff", "gan", "classify"):
        steps = int(tr["steps"])
        evals = _evaluations(steps, int(ev.get("every") or steps))
        samples = steps * int(tr["batch_size"])
        drawn = evals * draws * n  # generated images in all evaluations; their features, plus the reference's once
        if t.recipe == "edm":
            nfe = 2 * steps_per - 1 if ev.get("sampler") == "heun" else steps_per
            held = HELD_OUT_DENOISE if "denoise_loss" in (ev.get("metrics") or ()) else 0
            return samples, drawn * nfe + evals * held, TRAIN_FACTOR, _features(t, drawn + n)
        if t.recipe == "vdiff":
            g = _guided(t, tr.get("cfg_weight"))
            grid = int(tr.get("interpolations") or 0) * 8  # the last evaluation's interpolation grid (DDIM)
            return samples, (drawn + grid) * steps_per * g, TRAIN_FACTOR, _features(t, drawn + n)
        if t.recipe == "gan":
            return samples, drawn, GAN_TRAIN_FACTOR, _features(t, drawn + n)
        if tr.get("lr") is None:  # classify: the learning-rate range test, not counted in steps
            samples += int(tr.get("lr_find_steps") or 0) * int(tr["batch_size"])
        return samples, evals * size(t, "test"), TRAIN_FACTOR, 0.0
    epochs = int(tr.get("epochs") or 0)
    samples = epochs * size(t, "train") if epochs else int(tr.get("steps") or 0) * int(tr.get("batch_size") or 1)
    timing = 16 if "inference" in (ev.get("metrics") or ()) else 0  # compression_eval: 4 calls of 4 images
    if t.recipe == "score":
        sampler = ev.get("sampler")
        nfe = ODE_NFE if sampler == "ode" else 2 * steps_per if sampler == "pc" else steps_per
        return samples, (draws * n + timing) * nfe, TRAIN_FACTOR, _features(t, (draws + 1) * n)
    if t.recipe == "ddpm_image":
        nfe = int(tr.get("T") or 0) * _guided(t, tr.get("cfg_scale"))
        return samples, (draws * n + timing) * nfe, TRAIN_FACTOR, _features(t, (draws + 1) * n)
    if t.recipe == "ddpm":  # after the last epoch: `runs` sampling runs of as many points as the test split
        return samples, int(ev.get("runs") or 3) * size(t, "test") * int(tr.get("T") or 0), TRAIN_FACTOR, 0.0
    return samples, 0, TRAIN_FACTOR, 0.0


def _skipped(t: Trial, gpus_per_worker: float) -> str:
    """Why a trial trains nothing on its resources ("" when it trains): bitsandbytes arms need CUDA."""
    if str(t.train.get("quantize", "")).startswith("bnb") and gpus_per_worker <= 0:
        return "skipped: bitsandbytes needs CUDA"
    return ""


# ------------------------------------------------------------------------------------------------- the rates
def _model_key(t: Trial) -> str:
    return json.dumps([t.family, t.model], sort_keys=True, default=str)


def _example(family: str, cfg: Any, b: int):
    """A call of one training-shaped forward of the family's model on a batch of ``b`` random inputs, or None for
    a family this does not know."""
    import torch

    def image():
        side = cfg.input_size
        return torch.randn(b, cfg.in_channels, side, side)

    def labels(k):
        return torch.randint(0, k, (b,)) if k else None

    if family == "block_sharing":
        x, s, y = image(), torch.rand(b) + 0.5, labels(cfg.num_classes)
        return lambda m: m(x, s, class_labels=y)
    if family == "vdiff_unet":
        x, s, y = image(), torch.randn(b), labels(cfg.num_classes)
        return lambda m: m(x, s, y)
    if family == "ddpm_unet":
        x, s, y = image(), torch.randint(0, 1000, (b,)), labels(cfg.num_classes)
        return lambda m: m(x, s, y)
    if family == "score_net":
        x, s = image(), torch.rand(b) + 1e-3
        return lambda m: m(x, s)
    if family == "classical_disc":
        x = image()
        return lambda m: m(x)
    if family == "dcgan_ds":  # the zoo counts a generator and a discriminator forward per sample
        z, y = torch.randn(b, cfg.z_dim), labels(cfg.num_classes)
        return lambda m: m.discriminator(m.generator(z, y), y)
    if family == "toy_mlp":
        x, s = torch.randn(b, cfg.n_dim), torch.randint(0, max(int(cfg.max_t), 1), (b,))
        return lambda m: m(x, s)
    if family == "null":
        x = torch.randn(b, cfg.features)
        return lambda m: m(x)
    return None


def _build(family: str, model: dict[str, Any]):
    """The trial's model, allocated without its initialisation (which costs more than the timed passes for large
    models) and filled with small random values; only its speed matters here."""
    import torch

    import zoo

    fam = zoo.get_family(family)
    names = {f.name for f in dataclasses.fields(fam.config_cls)}
    cfg = fam.config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if k in names})
    with torch.device("meta"):
        m = fam.build(cfg)
    m = m.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*m.parameters(), *m.buffers()]:
            if tensor.is_floating_point():
                tensor.uniform_(-0.05, 0.05)
    return m, cfg


def measure_rate(t: Trial) -> float | None:
    """Achieved training FLOP/s of ``t``'s model on one thread of this machine's CPU: forward + backward passes at a
    small batch (one warm-up, then up to MAX_TIMED within MODEL_BUDGET_S; the fastest counts), each credited with
    TRAIN_FACTOR x the zoo's forward FLOPs per sample (what one forward + backward does, whatever the recipe's step
    does around it). None for a family without an example input."""
    import torch

    if t.gflops <= 0:
        return None
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        model, cfg = _build(t.family, t.model)
        norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        per_sample = TRAIN_FACTOR * t.gflops * 1e9
        b = int(max(2 if norm else 1, min(int(t.train.get("batch_size") or 1), PASS_FLOPS / per_sample)))
        call = _example(t.family, cfg, b)
        if call is None:
            return None
        model.train()

        def step() -> float:
            t0 = time.perf_counter()
            out = call(model)
            out.float().square().mean().backward()
            model.zero_grad(set_to_none=False)  # kept: allocating a large model's gradients anew is not training
            return time.perf_counter() - t0

        step()  # warm-up: the first pass builds kernels and allocates the gradients
        best, timed = step(), 1
        while timed < MAX_TIMED and time.perf_counter() - started < MODEL_BUDGET_S:
            best, timed = min(best, step()), timed + 1
        return per_sample * b / best
    finally:
        torch.set_num_threads(old_threads)


def _recorded_rate(run: Any, samples_per_epoch: int) -> tuple[float, str] | None:
    """(samples/s, words) from a finished run's last logged throughput, or None."""
    metrics = getattr(getattr(run, "data", None), "metrics", None) or {}
    for key, unit in (("images_per_s", "images/s"), ("points_per_s", "points/s")):
        if metrics.get(key):
            return float(metrics[key]), f"{float(metrics[key]):,.4g} {unit}"
    ms = metrics.get("train_ms_per_epoch")
    if ms and samples_per_epoch:
        return samples_per_epoch / (float(ms) / 1000), f"{float(ms) / 1000:,.4g} s/epoch"
    return None


class _Rates:
    """Each trial's FLOP/s on this machine: recorded by a finished run of the trial where there is one, else measured
    here once per distinct model on one thread (cached within the call) and scaled to the ``threads`` a trial gets,
    within MEASURE_BUDGET_S for the whole call."""

    def __init__(self, threads: int, budget_s: float) -> None:
        self.threads, self.deadline = threads, time.perf_counter() + budget_s
        self.measured: dict[str, tuple[float | None, Trial]] = {}
        self.scaled = f", x {threads} threads" if threads > 1 else ""

    def recorded(self, t: Trial, run: Any, factor: float,
                 size: Callable[[Trial, str], int]) -> tuple[float, str] | None:
        per_epoch = size(t, "train") if t.train.get("epochs") else 0
        got = _recorded_rate(run, per_epoch)
        if got is None or t.gflops <= 0:
            return None
        samples_per_s, words = got
        return factor * t.gflops * 1e9 * samples_per_s, f"recorded by its finished run: {words}"

    def measure(self, t: Trial) -> tuple[float | None, str]:
        key = _model_key(t)
        if key not in self.measured:
            if time.perf_counter() < self.deadline:
                try:
                    self.measured[key] = (measure_rate(t), t)
                except Exception:  # noqa: BLE001 - a rate is a nicety: the estimate goes on without it
                    self.measured[key] = (None, t)
            else:
                return self._borrowed(t)
        rate, _ = self.measured[key]
        if rate is None:
            return None, "not measured"
        return rate * self.threads, f"measured here: {rate / 1e9:,.3g} GFLOP/s on 1 thread{self.scaled}"

    def _borrowed(self, t: Trial) -> tuple[float | None, str]:
        """Past the budget: the rate of the measured model of the same family closest in FLOPs."""
        same = [(abs(math.log(max(o.gflops, 1e-12) / max(t.gflops, 1e-12))), rate, o)
                for rate, o in self.measured.values() if rate and o.family == t.family]
        if not same:
            return None, "not measured (time budget spent)"
        _, rate, other = min(same, key=lambda x: x[0])
        return rate * self.threads, f"as measured for {other.variant}: {rate / 1e9:,.3g} GFLOP/s{self.scaled}"


def machine_cpus() -> float:
    """CPUs a private local Ray instance would have on this machine (Ray's own count, which honours container
    limits), else the CPUs this process may use."""
    try:
        from ray._private.utils import get_num_cpus

        return float(get_num_cpus())
    except Exception:  # noqa: BLE001 - Ray's private helper moved: the affinity mask is close enough
        return float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def estimate_trials(loaded: LoadedStudy, trials: list[Trial], runs: Mapping[str, Any] | None = None,
                    measure: bool = True, cpus: float | None = None,
                    budget_s: float | None = None) -> list[TrialEstimate]:
    """Each trial's estimated FLOPs and GPU-hours, and with ``measure`` its FLOP/s on this machine: from ``runs``
    (config hash -> a FINISHED MLflow run of that trial) where one recorded its throughput, else measured here on one
    thread and scaled to the CPUs one trial gets (at most ``cpus``, default this machine's), within ``budget_s``
    seconds of measuring (default MEASURE_BUDGET_S)."""
    res = loaded.study.resources
    size = _Sizes()
    rates = None
    if measure:
        threads = max(1, int(min(max(1.0, res.cpus_per_worker * res.workers), cpus or machine_cpus())))
        rates = _Rates(threads, MEASURE_BUDGET_S if budget_s is None else budget_s)
    trainer: dict[str, str] = {}
    out = []
    for t in trials:
        precision = PRECISION.get(str(t.train.get("mixed_precision", "no")), "fp32")
        skipped = _skipped(t, res.gpus_per_worker)
        if skipped:
            out.append(TrialEstimate(t.config_hash, 0, 0, 0.0, 0.0, precision, skipped))
            continue
        samples, passes, factor, features = _work(t, size)
        note = ""
        if t.train_hash:
            first = trainer.setdefault(t.train_hash, t.config_hash)
            if first != t.config_hash:
                samples, note = 0, f"trained by {first}"
        forward = t.gflops * 1e9
        est = TrialEstimate(t.config_hash, samples, passes, factor * forward * samples, forward * passes + features,
                            precision, note)
        if rates is not None and est.flops:
            got = rates.recorded(t, (runs or {}).get(t.config_hash), factor, size)
            rate, source = got if got else rates.measure(t)
            est = dataclasses.replace(est, rate=rate, rate_source=source)
        out.append(est)
    return out


def _wall(minutes: list[float], slots: int) -> float:
    """Wall minutes of ``minutes`` run ``slots`` at a time, longest first, each on the first free slot."""
    free = [0.0] * max(1, slots)
    for m in sorted(minutes, reverse=True):
        i = free.index(min(free))
        free[i] += m
    return max(free)


def estimate_total(loaded: LoadedStudy, estimates: list[TrialEstimate], cpus: float | None = None) -> EstimateTotal:
    """The estimates together; on this machine (``cpus``, default its own) as many trials run at once as its CPUs
    hold (or the study's resources.max_concurrent_trials)."""
    res = loaded.study.resources
    cpus = cpus if cpus is not None else machine_cpus()
    need = trial_cpus(res)
    slots = max(1, int(cpus // max(need, 1e-9)))
    if res.max_concurrent_trials:
        slots = min(slots, res.max_concurrent_trials)
    minutes = [e.minutes for e in estimates]
    known = None if any(m is None for m in minutes) else [float(m) for m in minutes]
    sources = tuple(dict.fromkeys("recorded by finished runs" if e.rate_source.startswith("recorded") else
                                  "measured here" for e in estimates if e.rate))
    return EstimateTotal(
        trials=len(estimates), flops=sum(e.flops for e in estimates),
        gpu_hours=sum(e.gpu_hours for e in estimates),
        gpu_basis=gpu_label(e.precision for e in estimates if e.flops) if any(e.flops for e in estimates)
        else gpu_label(),
        trial_minutes=sum(known) if known is not None else None,
        wall_minutes=_wall(known, slots) if known is not None else None,
        slots=slots, cpus=cpus, need_cpus=need, sources=sources)


def describe_profile(loaded: LoadedStudy, trials: list[Trial], total: EstimateTotal) -> str:
    """What a profile asks for, in a clause: "profile 'paper' trains 16 trials x 2,000,000 steps on 1 GPU and 8 CPUs
    each (an estimated 1,100 GPU-hours at A100 fp32 19.5 TFLOP/s at 40% utilisation)"."""
    res = loaded.study.resources
    lengths = {}
    for t in trials:
        unit = "epochs" if t.train.get("epochs") else "steps"
        lengths.setdefault(unit, set()).add(int(t.train.get(unit) or 0))
    length = " and ".join(f"{min(v):,} {u}" if len(v) == 1 else f"{min(v):,}-{max(v):,} {u}"
                          for u, v in lengths.items()) or "nothing"
    gpus = res.workers * res.gpus_per_worker
    parts = [f"{gpus:g} GPU{'s' if gpus != 1 else ''}"] if gpus else []
    parts.append(_cores(trial_cpus(res)))
    workers = f" ({res.workers} workers)" if res.workers > 1 else ""
    return (f"profile '{loaded.profile}' trains {len(trials)} trial{'s' if len(trials) != 1 else ''} x {length} on "
            f"{' and '.join(parts)} each{workers} (an estimated {_number(total.gpu_hours)} GPU-hours at "
            f"{total.gpu_basis})")
