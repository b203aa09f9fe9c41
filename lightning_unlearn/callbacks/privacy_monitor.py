"""PerInstancePrivacyMonitor: per-example privacy losses of any Lightning training run.

Add the callback to the Trainer you already have; after ``fit`` its :attr:`ledger` holds, for
every training example, the accumulated Rényi privacy loss ``P(x, alpha)`` (THEORY §1-§3), the
number of times the example was trained on and its gradient norms.

Per backward pass (automatic or manual optimisation) the monitor:

1. reads the per-example gradient norms from Opacus hooks attached to the module in place
   (:func:`~lightning_unlearn.grad_norms.attach_norm_hooks`);
2. undoes what Lightning did to the loss (THEORY §1): the division by
   ``accumulate_grad_batches`` (automatic optimisation only) and the fp16 ``GradScaler`` scale;
   bf16 norms are promoted to float32; ``loss_reduction`` tells Opacus how the loss was reduced;
3. turns norms into ratios ``r`` with :class:`~lightning_unlearn.accounting.NoiseConfig`
   (the learning rate of this step comes from the first optimizer's first param group) and
   buffers ``(ids, r, norms)``;
4. every ``flush_every`` backward passes, and before anything reads or saves the ledger, adds
   the buffered steps' per-step losses (THEORY §2), weighted by ``1/q`` for the online estimator
   (THEORY §3), in one batched update. The sweep estimator instead recomputes the norms of the
   tracked examples every ``sweep_every`` optimizer steps and adds ``sweep_every * eps``.

Nothing in this path synchronises with the device.

The callback is the sequence of Lightning hooks; its parts are small objects with explicit
inputs: :class:`~lightning_unlearn.callbacks._monitor_config.MonitorConfig` (the options,
validated), :class:`~lightning_unlearn.callbacks._online.OnlineEstimator` (the step buffer and
its flush), :class:`~lightning_unlearn.callbacks._monitor_sweep.SweepEstimator`,
:class:`~lightning_unlearn.accounting.WorstCaseAccountant`, the DDP reduction and the non-finite
flag (``_ddp``), the loggers' summaries (``_monitor_logging``) and the first-step self-check
(``_self_check``, given what it needs as :class:`~lightning_unlearn.callbacks._self_check.
SelfCheckInputs`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_unlearn.accounting import (
    DEFAULT_ALPHAS,
    Convention,
    PrivacyLedger,
    WorstCaseAccountant,
    per_step_rdp,
)
from lightning_unlearn.callbacks._ddp import NonFiniteFlag, reduce_ledger_into
from lightning_unlearn.callbacks._loss_weights import (
    LossWeights,
    check_loss_weights,
    engine_reduction,
    loss_weights_of,
    undo_loss_weights,
)
from lightning_unlearn.callbacks._monitor_config import (
    MONITOR_STATE_VERSION,
    Estimator,
    MonitorConfig,
    check_resume,
    check_state_version,
)
from lightning_unlearn.callbacks._monitor_ids import SampleIdSource, check_id_range
from lightning_unlearn.callbacks._monitor_logging import log_epoch, report_mask
from lightning_unlearn.callbacks._monitor_sweep import SweepEstimator, default_sweep_loss
from lightning_unlearn.callbacks._online import OnlineEstimator, tracked_mask
from lightning_unlearn.callbacks._run_plan import (
    RunPlan,
    check_norm_count,
    check_one_backward,
    find_train_data,
    plan_run,
    recording_metadata,
    undo_trainer_scaling,
)
from lightning_unlearn.callbacks._self_check import (
    SelfCheckInputs,
    SelfCheckResult,
    default_self_check_loss,
    run_self_check,
)
from lightning_unlearn.grad_norms import GradSampleMode, NormHooks, attach_norm_hooks
from lightning_unlearn.integrity import tensors_sha256

__all__ = ["MONITOR_STATE_VERSION", "PerInstancePrivacyMonitor"]

_OPTIONS = frozenset(f.name for f in fields(MonitorConfig) if f.init)


class PerInstancePrivacyMonitor(Callback):
    """Per-example Rényi privacy losses of a training run (THEORY §1-§4).

    The ledger is an *estimate* (STYLE §11): with ``estimator="online"`` an observation of an
    example with ratio ``r`` stands for the ``1/q`` steps of an epoch, so it adds
    ``(1/q) * eps(alpha; q, r)`` (THEORY §3: "the epoch's steps at the norm seen this epoch";
    unbiased under Poisson sampling). With ``estimator="sweep"`` the tracked examples' norms are
    recomputed every ``sweep_every`` optimizer steps at the current weights (one extra
    forward+backward over the tracked examples, through ``training_step``) and each sweep adds
    ``sweep_every * eps``; a last sweep at the end of training covers the remaining steps.

    .. math::

        P(x, \\alpha) = \\sum_t \\varepsilon_t(\\alpha; x)

    Under DDP every rank records the examples of its own batches in a dense table of length N;
    the tables are reduced by sum at the end of every training epoch, before every checkpoint and
    at the end of training, so every rank then holds the full ledger. ``DistributedSampler``
    pads the last round of an epoch by repeating examples: those examples really are trained on
    twice in that epoch (their gradients enter two ranks' batches), and are counted twice.

    The keyword arguments are flat, typed and validated in ``__init__`` (so a LightningCLI YAML
    names them as ``trainer.callbacks`` ``init_args``); in Python the same options can be built
    once as a :class:`~lightning_unlearn.callbacks.MonitorConfig` and passed to
    :meth:`from_config`. The options are kept in :attr:`config`.

    Args:
        noise_multiplier: ``sigma`` of the noise convention (THEORY §1). For ``"nominal"`` it is
            a nominal value for training without explicit noise: the losses are then a
            calibrated difficulty score, not a privacy guarantee.
        max_grad_norm: clip norm ``C`` of DP-SGD / SGLD, or None for no clipping (then the
            worst-case epsilon is not defined and not logged).
        alphas: integer Rényi orders >= 2.
        convention: ``"nominal"``, ``"dpsgd"`` or ``"sgld"`` (THEORY §1).
        sample_rate: ``q``; default global batch size / N, where the global batch is the
            per-rank ``DataLoader`` batch size x world size x ``accumulate_grad_batches``.
        estimator: ``"online"`` or ``"sweep"`` (THEORY §3).
        sweep_every: sweep period K in optimizer steps (``estimator="sweep"``).
        track_ids: ids whose privacy losses are accumulated (default: all). Counts and norms
            are recorded for every trained example.
        grad_sample_mode: ``"fused"`` (default: the fastest, this package's own hooks),
            ``"ghost"`` (Opacus' ghost hooks), ``"hooks"`` or ``"functorch"``; see
            :func:`~lightning_unlearn.grad_norms.attach_norm_hooks`.
        delta: ``delta`` of the logged and exported epsilons (THEORY §4).
        save_dir: if set, rank 0 writes ``privacy_ledger.pt`` and ``privacy_ledger.csv`` there at
            the end of ``fit``.
        sample_id_fn: optional ``batch -> ids``. Not needed for a map-style dataset: the
            monitor reads each batch's ids from the indices the training ``DataLoader``'s
            sampler yields (indices into ``loader.dataset``), so neither the dataset nor the
            batches change. Ids a batch carries (``IndexedDataset``, a ``"sample_id"`` key, or
            this function) take precedence; they are needed for an ``IterableDataset`` or a
            batch sampler yielding something other than integer indices.
        state_key: key of this monitor's state in checkpoints (set it when two monitors
            coexist). Default ``"PerInstancePrivacyMonitor"``.
        loss_reduction: how ``training_step``'s loss weights the examples of the batch:
            ``"mean"`` (default, ``w_i = 1/B``), ``"sum"`` (``w_i = 1``), or a callable
            ``batch -> Tensor[B]`` of weights ``w_i`` with ``loss = sum_i w_i * loss_i`` (a
            loss averaged over the tokens of a padded batch:
            ``lambda b: token_mean_weights(n_tokens(b))``, see
            :func:`~lightning_unlearn.callbacks.token_mean_weights`). Each recorded norm is that
            of the example's own loss (THEORY §1).
        num_samples: N; default ``len`` of the training ``DataLoader``'s dataset.
        exclude_unsupported: leave BatchNorm-like layers out of the norm (see
            :func:`~lightning_unlearn.grad_norms.attach_norm_hooks`).
        exclude: qualified names of parameters (or of layers, for all their parameters) left
            out of the norm on purpose, e.g. a learnable temperature used directly in
            ``training_step``; a warning names them and their share of the parameters, and the
            losses then describe the remaining parameters only.
        log_histograms: write TensorBoard histograms every epoch.
        flush_every: backward passes whose ``(ids, r, norms)`` are buffered on the device
            before the per-step loss of THEORY §2 and the ledger update run once over all of
            them (default 32; 1: at every step). Each step then only forms its ratios (with its
            own learning rate and batch); the fixed cost of those calls (a few dozen tensor
            operations, kernel launches on an accelerator) is paid once per flush. The ledger
            is the same for every value: the buffer is also flushed at every epoch end, before
            every checkpoint, sweep and read of :attr:`ledger`, at the end of training and on
            an exception. It holds ``flush_every`` batches of ids, ratios and norms.
        self_check: on the first training batch of every ``fit``, compare the engine's norms of
            ``self_check_samples`` examples with a batch-of-one reference through
            ``training_step`` (:meth:`self_check_loss`) and raise
            :class:`~lightning_unlearn.errors.SelfCheckError` on a disagreement beyond float
            tolerance, naming the likely cause. No side effect on the run (no optimizer step,
            no logging, buffers and module attributes restored, RNG forked, ``p.grad``
            untouched); costs about one training step plus ``self_check_samples`` batch-of-one
            steps, once. The result is kept in :attr:`self_check_result`.
        self_check_samples: examples of the first batch the self-check compares (spread over the
            batch).

    Raises:
        ValueError: on an invalid argument; the message names it.
        SelfCheckError: (during ``fit``) the first-step self-check failed.
        MultipleBackwardError: (during ``fit``) two backward passes went through one batch
            before its optimizer step.

    Example:
        >>> monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0, max_grad_norm=1.0,
        ...                                     convention="dpsgd")
        >>> monitor.state_key
        'PerInstancePrivacyMonitor'
        >>> same = PerInstancePrivacyMonitor.from_config(monitor.config)
        >>> same.config.noise == monitor.config.noise
        True
    """

    def __init__(
        self,
        noise_multiplier: float = 1.0,
        max_grad_norm: float | None = None,
        alphas: Iterable[int] = DEFAULT_ALPHAS,
        convention: Convention = "nominal",
        sample_rate: float | None = None,
        estimator: Estimator = "online",
        sweep_every: int = 100,
        track_ids: Sequence[int] | Tensor | None = None,
        grad_sample_mode: GradSampleMode = "fused",
        delta: float = 1e-5,
        save_dir: str | os.PathLike[str] | None = None,
        sample_id_fn: Callable[[Any], Tensor] | None = None,
        state_key: str | None = None,
        *,
        loss_reduction: LossWeights = "mean",
        num_samples: int | None = None,
        exclude_unsupported: bool = False,
        exclude: Sequence[str] = (),
        log_histograms: bool = True,
        flush_every: int = 32,
        self_check: bool = True,
        self_check_samples: int = 4,
    ) -> None:
        options = {k: v for k, v in locals().items() if k != "self"}  # every argument
        self._setup(MonitorConfig(**options))

    @classmethod
    def from_config(cls, config: MonitorConfig) -> PerInstancePrivacyMonitor:
        """A monitor with the options of ``config`` (the same as its flat keyword arguments)."""
        return cls(**config.options())

    def __getattr__(self, name: str) -> Any:
        """The options as read-only attributes (``monitor.delta``, ...), from :attr:`config`."""
        config = self.__dict__.get("config")  # absent while unpickling (ddp_spawn)
        if config is not None and name in _OPTIONS:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _setup(self, config: MonitorConfig) -> None:
        self.config = config
        self.noise, self.alphas = config.noise, tuple(config.alphas)
        self._track_ids = cast("Tensor | None", config.track_ids)  # normalised by the config
        self._state_key = config.state_key or type(self).__name__
        self.self_check_result: SelfCheckResult | None = None
        self._self_check_pending = False
        self._weights: Tensor | None = None  # per-example loss weights of the current batch
        self._backwards = 0  # backward passes since the batch started or the optimizer stepped
        self._ledger: PrivacyLedger | None = None
        self._pending: PrivacyLedger | None = None  # per-rank additions since the last reduction
        self._hooks: NormHooks | None = None
        self._loaded_state: dict[str, Any] | None = None
        self._ids: Tensor | None = None
        self._nonfinite: NonFiniteFlag | None = None  # checked at epoch end and checkpoints
        self._plan = RunPlan(None, 0, 1, 1, 1.0)  # this fit's N, q and global batch
        self._steps = 0
        self._first_batch = True
        self._worst = WorstCaseAccountant(self.noise, self.alphas)
        self._online = OnlineEstimator(self.alphas, config.flush_every)  # steps not yet added
        self._sweeps = SweepEstimator(config.sweep_every, self._track_ids)
        self._id_source = SampleIdSource(config.sample_id_fn)  # explicit ids, else the sampler's

    # ------------------------------------------------------------------ public
    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    @property
    def ledger(self) -> PrivacyLedger:
        """The :class:`~lightning_unlearn.accounting.PrivacyLedger` (available once training
        starts; under ``ddp_spawn`` the parent process's copy is not updated: read
        ``save_dir/privacy_ledger.pt`` or the checkpoint instead).

        Reading it adds the buffered steps first (see ``flush_every``), so mid-training it holds
        every step so far (under DDP: up to the last reduction, every epoch end and checkpoint).
        """
        self._flush()
        return self._require_ledger()

    def _require_ledger(self) -> PrivacyLedger:
        if self._ledger is None:
            raise RuntimeError(
                "Expected a ledger, but training has not started: `monitor.ledger` exists once "
                "`trainer.fit` reaches `on_train_start`."
            )
        return self._ledger

    @property
    def steps(self) -> int:
        """Optimizer steps observed so far (including those of a resumed checkpoint)."""
        return self._steps

    def worst_case_epsilon(self) -> float | None:
        """Data-independent epsilon at ``delta`` of the steps so far (THEORY §4), or None
        without clipping. With clipping every per-instance epsilon is at most this value."""
        return self._worst.epsilon(self.config.delta)

    # ------------------------------------------------------------------ lifecycle
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._attach_hooks(pl_module)
        self._id_source.install(trainer)  # before Lightning iterates the training loader

    def _attach_hooks(self, pl_module: pl.LightningModule) -> NormHooks:
        config = self.config
        self._hooks = attach_norm_hooks(
            pl_module,
            config.grad_sample_mode,
            loss_reduction=engine_reduction(config.loss_reduction),
            exclude_unsupported=config.exclude_unsupported,
            exclude=config.exclude,
        )
        return self._hooks

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()  # nothing should be left, but never carry steps into another ledger
        config, device = self.config, pl_module.device
        loader_data = find_train_data(trainer)
        id_data, id_size = self._id_source.id_space(
            loader_data.dataset if loader_data is not None else None
        )
        plan = plan_run(
            trainer,
            pl_module.automatic_optimization,
            config.num_samples,
            config.sample_rate,
            id_size,
        )
        if id_size is not None and plan.data is not None:
            plan = replace(plan, data=replace(plan.data, dataset=id_data, num_samples=id_size))
        self._plan, n = plan, plan.num_samples
        metadata = recording_metadata(plan, config, pl_module, trainer.world_size)
        old = self._ledger
        self._ledger = PrivacyLedger(
            n, self.alphas, self.noise.convention, device=device, metadata=metadata
        )
        if self._loaded_state is not None:
            self._apply_state(self._loaded_state)
            self._loaded_state = None
        elif old is not None:  # a second `fit` with the same monitor continues its ledger
            self._check_resume(old.metadata, "The monitor's ledger of a previous fit")
            self._ledger.load_state_dict(old.to("cpu").state_dict())
            self._ledger.metadata = metadata
        self._pending = (
            PrivacyLedger(n, self.alphas, self.noise.convention, device=device)
            if trainer.world_size > 1
            else None
        )
        method = getattr(self.per_step_loss, "__func__", None)
        self._online.start(
            sample_rate=plan.sample_rate,
            tracked=tracked_mask(self._track_ids, n, device),
            losses_given=method is not PerInstancePrivacyMonitor.per_step_loss,
        )
        self._nonfinite = NonFiniteFlag(device, trainer.world_size)
        self._first_batch = True
        self._self_check_pending = config.self_check
        self._id_source.attach(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # on_after_backward gets no batch: keep the ids of this one (PLATFORM.md).
        ids = self._id_source.batch_ids(batch)
        if self._first_batch or ids.device.type == "cpu":
            check_id_range(ids, self._require_ledger().num_samples)
            self._first_batch = False
            if callable(self.config.loss_reduction):
                check_loss_weights(loss_weights_of(self.config.loss_reduction, batch), ids.shape[0])
        self._ids = ids
        self._weights = loss_weights_of(self.config.loss_reduction, batch)
        self._backwards = 0
        if self._self_check_pending and self._hooks is not None:
            self._self_check_pending = False
            inputs = SelfCheckInputs(
                hooks=self._hooks,
                attach_hooks=self._attach_hooks,
                loss=self.self_check_loss,
                loss_reduction=self.config.loss_reduction,
                samples=self.config.self_check_samples,
            )
            self.self_check_result = run_self_check(
                inputs, trainer, pl_module, batch, batch_idx, ids
            )
        if self._hooks is not None:
            self._hooks.clear()  # drop anything left by a backward the monitor did not see
            # Inputs broadcast over the batch (HF's [1, T] position_ids) are expanded to it.
            self._hooks.expect_batch_size(ids.shape[0])

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hooks is None or self._ids is None:
            return
        self._backwards += 1
        check_one_backward(self._backwards)
        norms = undo_loss_weights(self._hooks.per_sample_norms(), self._weights)
        self._hooks.clear()
        ids = self._ids.to(norms.device)
        check_norm_count(norms, ids)
        norms, scaled = undo_trainer_scaling(norms, self._plan.accumulate, trainer)
        if not scaled and self._nonfinite is not None:  # a scaler skips its overflow steps
            self._nonfinite.check(norms, ids)
        self._record(trainer, ids, norms)

    def _record(self, trainer: pl.Trainer, ids: Tensor, norms: Tensor) -> None:
        """Buffer one step; what depends on the step (lr, batch) is evaluated now."""
        values: Tensor | None = None  # sweep estimator: counts and norms only
        if self.config.estimator == "online":
            # The global batch of this step (a short last batch included), for "sgld".
            batch = ids.shape[0] * trainer.world_size * self._plan.accumulate
            if self._online.losses_given:  # its semantics are per step: call it per step
                values = self.per_step_loss(norms, trainer, batch) * (1.0 / self._plan.sample_rate)
            else:
                values = self.noise.ratios(norms, lr=_step_lr(trainer), batch_size=batch)
        if self._online.record(ids, values, norms):
            self._flush()

    def _flush(self) -> None:
        """Add the buffered steps to the ledger (``_pending`` under DDP) in one update."""
        self._online.flush(self._pending if self._pending is not None else self._ledger)

    def per_step_loss(self, norms: Tensor, trainer: pl.Trainer, batch_size: int) -> Tensor:
        """Per-step per-instance Rényi loss of ``norms`` (THEORY §1-§2), ``[B, K]`` float64.

        Overridable, e.g. for a learning-rate dependent convention of your own. An override is
        called once per backward pass (and per sweep batch); the default is evaluated in
        batches of ``flush_every`` steps, from each step's ratios.
        """
        ratios = self.noise.ratios(norms, lr=_step_lr(trainer), batch_size=batch_size)
        return per_step_rdp(ratios, self._plan.sample_rate, self.alphas)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        self._backwards = 0  # the next backward belongs to the next step
        if trainer.optimizers and optimizer is not trainer.optimizers[0]:
            return
        self._steps += 1
        lr = float(optimizer.param_groups[0]["lr"])
        self._worst.step(lr, self._plan.global_batch, self._plan.sample_rate)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._ids = None
        if self.config.estimator == "sweep" and self._sweeps.due(self._steps):
            self._sweep(trainer, pl_module)

    def _sweep(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._hooks is not None
        assert self._nonfinite is not None
        self._flush()
        self._sweeps.run(
            trainer,
            pl_module,
            self._hooks,
            self._plan.data,
            self._pending if self._pending is not None else self.ledger,
            self._steps,
            sweep_loss=self.sweep_loss,
            step_loss=lambda norms: self.per_step_loss(norms, trainer, self._plan.global_batch),
            check_norms=self._nonfinite.check,
            sample_id_fn=self.config.sample_id_fn,
        )

    def sweep_loss(self, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> Tensor:
        """The loss of one sweep batch; by default ``pl_module.training_step``'s loss.

        Override for manual optimisation (whose ``training_step`` steps the optimizer) or to
        sweep with another loss. Logging calls inside are silenced during the sweep.
        """
        return default_sweep_loss(pl_module, batch, batch_idx)

    def self_check_loss(self, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> Tensor:
        """The loss of one self-check pass (the whole first batch, or one example of it).

        By default the loss the training step backpropagates: ``training_step``'s return value,
        or under manual optimisation the sum of the losses it hands to ``manual_backward``
        (which, like ``optimizers()``, ``lr_schedulers()``, ``clip_gradients`` and logging, is
        stubbed during the check: nothing is stepped, zeroed or logged). Override it when the
        loss cannot be had that way.
        """
        return default_self_check_loss(pl_module, batch, batch_idx)

    # ------------------------------------------------------------------ synchronisation
    def _sync(self, trainer: pl.Trainer) -> None:
        self._flush()
        if self._pending is not None and self._ledger is not None:
            reduce_ledger_into(trainer, self._pending, self._ledger)
        if self._nonfinite is not None:
            self._nonfinite.raise_if_set(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer)
        self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        ledger = self.ledger
        swept = self.config.estimator == "sweep"  # the sweep's examples have losses, not counts
        mask = report_mask(ledger, self._online.tracked, swept=swept)
        log_epoch(
            trainer.loggers,
            ledger,
            mask,
            trainer.global_step,
            delta=self.config.delta,
            worst_case_rdp=self._worst.rdp,
            histograms=self.config.log_histograms,
        )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()
        if self.config.estimator == "sweep" and self._sweeps.left(self._steps):
            self._sweep(trainer, pl_module)
        self._sync(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()
        if self._ledger is None:
            return
        # The run's length and final weights: budgets are capped by the former, and `unlearn`
        # checks that the ledger describes the checkpoint it is given by the latter.
        summary = {**self._run_summary(), "model_sha256": tensors_sha256(pl_module)}
        self._ledger.metadata = {**self._ledger.metadata, **summary}
        save_dir = self.config.save_dir
        if save_dir is None or not trainer.is_global_zero:
            return
        self._ledger.save(Path(save_dir) / "privacy_ledger.pt")
        self._ledger.to_csv(Path(save_dir) / "privacy_ledger.csv", delta=self.config.delta)

    def _run_summary(self) -> dict[str, Any]:
        worst = self.worst_case_epsilon()
        return {
            "steps": self._steps,
            "worst_case_epsilon": worst if worst is None or math.isfinite(worst) else None,
        }

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._flush()
        self._detach()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Keep the steps observed before the exception in the in-memory ledger. Lightning
        # re-raises `exception`; a second error from the flush must not replace it.
        steps = len(self._online)
        try:
            self._flush()
        except Exception as err:
            rank_zero_warn(
                f"The {steps} buffered steps could not be added to the privacy ledger after the "
                f"exception ({err!r}); the ledger lacks them."
            )
        finally:
            self._detach()

    def _detach(self) -> None:
        self._id_source.detach()
        if self._hooks is not None:
            self._hooks.detach()
            self._hooks = None
        self._ids = None

    # ------------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning collects `state_dict()` before this hook; reduce across ranks (every rank
        # calls this hook) and replace the entry so the checkpoint holds the full ledger.
        self._sync(trainer)
        if "callbacks" in checkpoint:
            checkpoint["callbacks"][self.state_key] = self.state_dict()

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.state_key not in checkpoint.get("callbacks", {}):
            rank_zero_warn(
                f"The checkpoint holds no state under {self.state_key!r}: the privacy ledger "
                "starts from zero although the model has already been trained. Resume from a "
                "checkpoint written with this monitor (same `state_key`) for complete losses."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        self._flush()  # the checkpoint layout has no buffer: it is always empty when saved
        return {
            "version": MONITOR_STATE_VERSION,
            "ledger": None if self._ledger is None else self._ledger.state_dict(),
            "steps": self._steps,
            "last_sweep": self._sweeps.last,
            "worst_case_rdp": None if self._worst.rdp is None else self._worst.rdp.cpu().clone(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied when the ledger is built (on_train_start), STYLE §5.
        check_state_version(state_dict, type(self).__name__)
        self._loaded_state = state_dict

    def _apply_state(self, state: dict[str, Any]) -> None:
        ledger_state = state["ledger"]
        if ledger_state is not None:
            self._check_resume(ledger_state.get("metadata", {}), "The checkpoint's ledger")
            metadata = self.ledger.metadata
            self.ledger.load_state_dict(ledger_state)
            self.ledger.metadata = metadata
        self._steps = int(state["steps"])
        self._sweeps.last = int(state["last_sweep"])
        worst = state["worst_case_rdp"]
        self._worst.rdp = None if worst is None else worst.to(torch.float64).clone()

    def _check_resume(self, saved: dict[str, Any], what: str) -> None:
        check_resume(saved, self.ledger.metadata, what)


def _step_lr(trainer: pl.Trainer) -> float | None:
    """The learning rate of the current step: the first optimizer's first param group."""
    return float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
