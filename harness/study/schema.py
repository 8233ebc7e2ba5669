"""The study file's schema: one frozen dataclass per section. It imports nothing from the harness, so every layer
may read a trial's sections typed (the training skeleton reads ``eval`` and ``data`` through it); loading,
validation and trial expansion are in ``harness.study.spec``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Resources:
    """Per-trial resources. One worker runs the recipe in the Tune trial process; several run as a Ray Train
    TorchTrainer (``ray_train: always`` forces that path for one worker too)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent_trials: int | None = None  # default: as many as the cluster's CPUs allow
    ray_train: str = "auto"  # auto | always
    max_failures: int = 0  # Tune restarts of a failed trial (from its last checkpoint)

    @property
    def uses_train(self) -> bool:
        """Whether each trial runs as a Ray Train TorchTrainer (several workers, or forced)."""
        return self.workers > 1 or self.ray_train == "always"


@dataclass(frozen=True)
class Budget:
    """Constraints checked before anything trains; ``diagnostic`` variants may exceed them and are flagged."""

    max_params: int | None = None
    max_steps: int | None = None
    diagnostic: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataSpec:
    root: str = "data"  # relative to the study file's parent's parent (the project), or absolute
    download: bool = False
    limit: int | None = None  # first n training images
    size: int | None = None
    channels: int | None = None
    pad: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the dataset's own options (synthetic: n, size; npz: path)


@dataclass(frozen=True)
class EvalSpec:
    every: int = 10_000  # steps between evaluations (and checkpoints); the last step is always evaluated
    n_samples: int = 2000  # generated samples per evaluation; the reference uses as many training images
    metrics: tuple[str, ...] = ("fid", "kid", "denoise_loss")
    # inception | classifier | auto (Inception when its weights are installed, else the classifier; resolved when the
    # study is loaded, so trial hashes, tables and MLflow carry the extractor actually used)
    extractor: str = "inception"
    inception_weights: str | None = None  # a local torch-fidelity weights file (offline clusters)
    sampler: str = "dpmpp_2m"  # dpmpp_2m | heun | euler
    sampler_steps: int = 50
    batch_size: int = 250
    grid: int = 64  # images in the sample grid logged at each evaluation
    runs: int | None = None  # point clouds: sampling runs averaged per evaluation (recipe default 3)
    emd_n: int | None = None  # point clouds: points in the EMD matching (recipe default 128)
    # image generators: each evaluation samples this many times with different noise seeds and logs the mean of each
    # distance, plus <metric>_sampling_sd (the sampling noise of one evaluation) from 2 on; None = 1 (one draw)
    sampling_seeds: int | None = None


@dataclass(frozen=True)
class TableSpec:
    kind: str = "best_checkpoint"  # which table builder: best_checkpoint (Table 1 style) | settings (per substudy)
    paper_csv: str | None = None  # file under harness/paper_tables/ with the paper's numbers
    metric: str = "fid"  # best_checkpoint: picks the checkpoint (lower is better); settings: the plotted metric
    # the reference variant: the report's relative columns and `harness compare --by variant`'s default baseline
    baseline: str | None = None
    # settings: a setting's value -> the paper's row label; "<substudy>/<setting>" for one substudy only
    labels: dict[str, str] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)  # settings: substudy -> x axis ("train.epochs", "depth")
    scatter: tuple[str, ...] = ()  # settings: (x metric, y metric) over every trial, e.g. (size, fid)
    # settings: substudy -> logged metric keys drawn over training steps (mean ± sd over seeds), e.g. accuracy curves
    curves: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # settings: extra tables made of other substudies' rows, e.g. {diffusion_vs_gan: [baseline, gan]}
    combine: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # best_checkpoint: a value of the table metric (e.g. 100 for FID): Table 1 gives each row's time to reach it
    # (steps, training images, minutes; MLPerf's time-to-quality), so variants that converge at different speeds
    # compare fairly
    quality_target: float | None = None


@dataclass(frozen=True)
class Study:
    name: str
    recipe: str
    datasets: tuple[str, ...]
    variants: tuple[str, ...]
    paper: str = ""
    description: str = ""
    model: dict[str, Any] = field(default_factory=dict)  # zoo overrides applied to every variant
    axes: dict[str, list] = field(default_factory=dict)  # "section.key" -> values, swept as a grid
    seeds: tuple[int, ...] = (0,)
    train: dict[str, Any] = field(default_factory=dict)  # validated by the recipe's TrainConfig
    eval: EvalSpec = field(default_factory=EvalSpec)
    resources: Resources = field(default_factory=Resources)
    budget: Budget = field(default_factory=Budget)
    data: DataSpec = field(default_factory=DataSpec)
    table: TableSpec = field(default_factory=TableSpec)
    profiles: dict[str, dict] = field(default_factory=dict)
    default_profile: str | None = None
    # draws of each metric floor (real vs real, perfect and trivial generators) measured once per dataset and
    # evaluation setting after the trials (harness.run.calibrate); 0: none. Not part of any trial's hash.
    calibration_draws: int = 5
    # Named parts of one study (e.g. one per question of a homework): each is a mapping of overrides (variants,
    # datasets, axes, train, ...) on top of the study; a trial shared by several parts runs once (same hash).
    substudies: dict[str, dict] = field(default_factory=dict)
