"""The training skeleton every recipe runs on, so a recipe keeps only its algorithm.

:class:`Training` is one trial's training as the recipe sees it:

- its typed sections (``cfg``: the recipe's train config; ``ev``: the eval section) from the trial payload;
- the Accelerator, and the seeding with its two random streams: ``gen``, the same on every rank, from which
  everything drawn for the *global* batch comes (batch order, noise, timesteps, augmentation parameters, dropped
  labels: each rank draws for the whole global batch and keeps its slice ``mine``), and torch's global RNG seeded
  per rank (model dropout). A recipe that draws per-sample randomness from ``gen`` for the global batch trains the
  same samples with the same randomness on any number of workers;
- its state (``track`` the parts: model, EMA, optimisers, schedulers, batch samplers): one checkpoint layout,
  saved by :meth:`checkpoint` and restored by :meth:`resume`, with both random streams and the step;
- one report window (:class:`ReportWindow`: mean losses over the window, the non-finite check, global images per
  second, data-wait share) and the resume tag sent once with the first report after a restart;
- one cadence (:meth:`run`): a report every ``log_every`` steps, and every ``eval.every`` steps and at the last an
  evaluation on rank 0 with a checkpoint.

Recipes whose unit is an epoch, or whose trained model several trials share (the compression recipes), use the
same object for setup, state and window, and drive their own loop (docs/architecture.md, "The training skeleton").
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from harness.study.schema import EvalSpec
from harness.training.context import TrialContext, TrialFailed

# (metrics, artifact paths, tags) from an evaluation on rank 0
EvalResult = tuple[dict[str, float], list[str], dict[str, str]]
RESUMED_TAG = "harness.resumed_from_step"


def typed(cls: type, section: dict[str, Any]) -> Any:
    """A payload section (plain dict, lists where the dataclass has tuples) as the dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in names})


def trial_model(trial: dict[str, Any]) -> tuple[Any, Any]:
    """(module, frozen config) of a trial's resolved zoo config."""
    import zoo

    family = zoo.get_family(trial["family"])
    cfg = typed(family.config_cls, trial["model"])
    return family.build(cfg), cfg


def load_split(trial: dict[str, Any], ctx: TrialContext, split: str, loader: Callable[..., Any] | None = None) -> Any:
    """A trial's dataset split (``loader``: the recipe's data loader, default images) from the trial's data root."""
    if loader is None:
        from harness.training.data import load_study_data as loader
    return loader(trial["dataset"], {**trial["data"], "root": str(ctx.data_root)}, split)


def param_groups(model: Any, lr: float, weight_decay: float) -> list[dict]:
    """The model's own AdamW groups when it declares them (zoo families decide what decays), else nanoGPT's rule."""
    if hasattr(model, "param_groups"):
        return model.param_groups(lr, weight_decay)
    from zoo.registry import decay_param_groups

    return decay_param_groups(model, lr, weight_decay)


class ReportWindow:
    """Sums of per-step values between two reports, kept on the device (no host synchronisation per step).

    ``add(images, **values)`` once per step: ``images`` is the number of samples this rank trained on, ``values``
    are 0-d tensors. ``close`` averages them over the ranks (the global batch's value: the mean of equal slices),
    then over the steps of the window, or over the samples for names in ``per_sample`` (values added as sums over
    the batch, like correct predictions); a non-finite mean fails the trial."""

    def __init__(self, acc: Any, world_size: int, rate_name: str = "images_per_s") -> None:
        self.acc = acc
        self.world_size = world_size
        self.rate_name = rate_name
        self._sums: dict[str, torch.Tensor] = {}
        self._steps = 0
        self._samples = 0
        self._t0 = time.perf_counter()

    def add(self, images: int, **values: torch.Tensor) -> None:
        for name, value in values.items():
            value = value.detach().float()
            if name in self._sums:
                self._sums[name] += value
            else:
                self._sums[name] = value.clone()
        self._steps += 1
        self._samples += int(images)

    def close(self, ctx: TrialContext, step: int, unit: str = "step", per_sample: tuple[str, ...] = ()) -> dict:
        """The window's metrics (means, rate, data-wait share), then a fresh window."""
        names = list(self._sums)
        sums = torch.stack([self._sums[n] for n in names]) if names else torch.zeros(0)
        if self.world_size > 1 and names:
            sums = self.acc.reduce(sums.to(self.acc.device), reduction="mean")
        values = [float(v) for v in sums.cpu()]
        elapsed = time.perf_counter() - self._t0
        metrics: dict[str, float] = {}
        for name, total in zip(names, values):
            metrics[name] = total / max(1, self._samples if name in per_sample else self._steps)
        bad = [f"{name} became {value}" for name, value in metrics.items() if not math.isfinite(value)]
        if bad:
            raise TrialFailed(f"training {'; '.join(bad)} by {unit} {step}")
        metrics[self.rate_name] = self._samples * self.world_size / max(elapsed, 1e-9)
        metrics["data_wait_share"] = ctx.data_wait_share(elapsed)
        self._sums, self._steps, self._samples = {}, 0, 0
        self._t0 = time.perf_counter()
        return metrics


class Training:
    """One trial's training (see the module docstring). ``seed_scale``: the streams are seeded with
    ``seed * seed_scale`` (+ rank for torch's global RNG); recipes keep the scale their results were made with."""

    def __init__(self, trial: dict[str, Any], ctx: TrialContext, config_cls: type, seed_scale: int = 1000,
                 rate_name: str = "images_per_s") -> None:
        self.trial, self.ctx = trial, ctx
        self.cfg = typed(config_cls, trial["train"])
        self.ev: EvalSpec = typed(EvalSpec, trial["eval"])
        self.seed = int(trial["seed"])
        self.acc = ctx.accelerator(getattr(self.cfg, "mixed_precision", "no"), getattr(self.cfg, "grad_accum", 1),
                                   compile=self.cfg.compile)
        self.rank, self.world_size = ctx.rank, ctx.world_size
        torch.manual_seed(self.seed * seed_scale + self.rank)  # per rank: model dropout
        self.gen = torch.Generator().manual_seed(self.seed * seed_scale)  # the global batch's stream
        self.step = 0
        self.restored: dict[str, Any] = {}  # a resumed checkpoint's entries that are not tracked parts
        self.window = ReportWindow(self.acc, self.world_size, rate_name)
        self._parts: dict[str, Any] = {}
        self._tags: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------- setup helpers
    @property
    def device(self) -> torch.device:
        return self.acc.device

    @property
    def mine(self) -> slice:
        """This rank's slice of a global batch of ``cfg.batch_size``."""
        from harness.training.data import shard_slice

        return shard_slice(self.cfg.batch_size, self.rank, self.world_size)

    def data(self, split: str, loader: Callable[..., Any] | None = None) -> Any:
        """The trial's dataset split, from the data root the trial was given."""
        return load_split(self.trial, self.ctx, split, loader)

    def model(self) -> tuple[Any, Any]:
        """(model in the train section's memory format, model config)."""
        from harness.training.speed import prepare_model

        model, model_cfg = trial_model(self.trial)
        return prepare_model(model, self.cfg), model_cfg

    def batches(self, dataset: Any, **kwargs: Any) -> Any:
        """Endless batches of this rank's slice of global batches of ``cfg.batch_size``, drawn from ``gen``."""
        from harness.training.data import TensorBatches

        return TensorBatches(dataset, self.cfg.batch_size, self.gen, device=self.device,
                             shard=(self.rank, self.world_size), **kwargs)

    def optimizer(self, cls: type, params: Any, **kwargs: Any) -> Any:
        from harness.training.speed import optimizer

        return optimizer(cls, params, self.cfg, self.device, **kwargs)

    def optimize(self, loss: torch.Tensor, module: Any, opt: Any, sched: Any = None) -> None:
        """One optimiser step on ``loss``: gradients zeroed, backward through Accelerate, the norm clipped to
        ``cfg.grad_clip`` where the recipe has that key and it is > 0, the step, then the schedule's step."""
        opt.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        clip = getattr(self.cfg, "grad_clip", 0)
        if clip and clip > 0:
            self.acc.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()

    def epoch_batches(self, batches: Any, module: Any) -> Any:
        """One epoch of this rank's batches as (index, x, y): ``module`` in train mode, each batch fetched inside
        ``data_wait`` and in the train section's memory format (recipes that count in epochs)."""
        from harness.training.speed import to_format

        module.train()
        for i in range(batches.batches_per_epoch):
            with self.ctx.data_wait():
                x, y = next(batches)
                x = to_format(x, self.cfg)
            yield i, x, y

    # ------------------------------------------------------------------------------------------------- state
    def track(self, **parts: Any) -> None:
        """Name the stateful parts (``state_dict``/``load_state_dict``) a checkpoint holds; None parts are left out.
        Track the plain modules and optimisers (before ``acc.prepare``): they share their state with the wrappers."""
        self._parts.update({k: v for k, v in parts.items() if v is not None})

    def resume(self, *extra: str, lock: bool = False) -> int:
        """Load the newest usable checkpoint into the tracked parts, both random streams and the step (``extra``:
        further entries it must hold, left in ``restored``); returns the step to continue from (0: fresh)."""
        state = self.ctx.load_checkpoint(required=(*self._parts, "rng", "step", *extra))
        if state is None:
            return 0
        for name, part in self._parts.items():
            part.load_state_dict(state[name])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.gen.set_state(rng["gen"])
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])  # dropout on the GPU draws from CUDA's streams
        self.step = int(state["step"])
        self.restored = {k: v for k, v in state.items() if k not in self._parts and k not in ("rng", "step")}
        self._tags[RESUMED_TAG] = str(self.step)
        return self.step

    def checkpoint(self, **extra: Any) -> dict[str, Any] | None:
        """The training state at ``step`` (rank 0; None elsewhere): tracked parts, random streams, step, trial."""
        if not self.ctx.is_main:
            return None
        return {**{name: part.state_dict() for name, part in self._parts.items()},
                "rng": {"torch": torch.get_rng_state(), "gen": self.gen.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                "step": self.step, "config": self.trial, **extra}

    def take_tags(self) -> dict[str, str]:
        """Tags to send with the next report (the resume point, once)."""
        tags, self._tags = self._tags, {}
        return tags

    # ------------------------------------------------------------------------------------------------ cadence
    def run(self, train_step: Callable[[int], tuple[int, dict[str, torch.Tensor]]],
            evaluate: Callable[[int, bool], EvalResult], *, log: Callable[[], dict[str, float]] | None = None,
            total: int | None = None, per_sample: tuple[str, ...] = (), checkpoint_extra: Callable[[], dict] | None
            = None) -> None:
        """Train from the resume point to ``total`` (default ``cfg.steps``): ``train_step(step)`` trains one step
        and returns (samples this rank trained on, {name: 0-d tensor}); every ``cfg.log_every`` steps a report
        with the window's means and ``log()``'s values; every ``eval.every`` steps and at the last, on rank 0,
        ``evaluate(step, last)``'s metrics, artifacts and tags, and a checkpoint (plus ``checkpoint_extra()``)."""
        total = self.cfg.steps if total is None else total
        while self.step < total:
            images, values = train_step(self.step)
            self.window.add(images, **values)
            self.step += 1
            last = self.step == total
            is_eval = self.step % self.ev.every == 0 or last
            if self.step % self.cfg.log_every and not is_eval:
                continue
            metrics = self.window.close(self.ctx, self.step, per_sample=per_sample)
            metrics.update(log() if log else {})
            artifacts: list[str] = []
            tags, ckpt = self.take_tags(), None
            if is_eval:
                self.acc.wait_for_everyone()
                if self.ctx.is_main:
                    with torch.random.fork_rng():  # training's random streams do not depend on the evaluation
                        m, artifacts, more = evaluate(self.step, last)
                    metrics.update(m)
                    tags.update(more)
                    ckpt = self.checkpoint(**(checkpoint_extra() if checkpoint_extra else {}))
                self.acc.wait_for_everyone()
            self.ctx.report(self.step, metrics, artifacts, tags=tags, done=last, checkpoint=ckpt)
