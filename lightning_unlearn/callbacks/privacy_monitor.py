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
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

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
    NoiseConfig,
    PrivacyLedger,
    WorstCaseAccountant,
    per_step_rdp,
    step_rdp_in_pieces,
    validate_alphas,
)
from lightning_unlearn.callbacks._loss_weights import (
    LossWeights,
    check_loss_weights,
    describe,
    engine_reduction,
    loss_weights_of,
    undo_loss_weights,
)
from lightning_unlearn.callbacks._monitor_config import (
    MONITOR_STATE_VERSION,
    Estimator,
    check_arguments,
    check_resume,
    check_state_version,
)
from lightning_unlearn.callbacks._monitor_ids import SampleIdSource
from lightning_unlearn.callbacks._monitor_sweep import run_sweep
from lightning_unlearn.callbacks._monitor_utils import (
    StepBuffer,
    epoch_metrics,
    find_train_data,
    nonfinite_error,
    plan_run,
    reduce_ledger_into,
    update_in_step_order,
    write_histograms,
)
from lightning_unlearn.callbacks._self_check import (
    SelfCheckResult,
    default_self_check_loss,
    run_self_check,
)
from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.errors import MultipleBackwardError
from lightning_unlearn.grad_norms import GradSampleMode, NormHooks, attach_norm_hooks
from lightning_unlearn.integrity import architecture_fingerprint, tensors_sha256

__all__ = ["MONITOR_STATE_VERSION", "PerInstancePrivacyMonitor"]


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
        self.noise = NoiseConfig(convention, float(noise_multiplier), max_grad_norm)
        self.alphas = validate_alphas(alphas)
        check_arguments(
            sample_rate=sample_rate,
            estimator=estimator,
            sweep_every=sweep_every,
            grad_sample_mode=grad_sample_mode,
            loss_reduction=loss_reduction,
            delta=delta,
            num_samples=num_samples,
            flush_every=flush_every,
        )
        if not isinstance(self_check_samples, int) or self_check_samples < 1:
            raise ValueError(
                f"Expected `self_check_samples` to be an integer >= 1, but got "
                f"{self_check_samples!r}."
            )
        self.sample_rate = None if sample_rate is None else float(sample_rate)
        self.estimator: Estimator = estimator
        self.sweep_every = sweep_every
        self.track_ids = None if track_ids is None else torch.as_tensor(track_ids).long().unique()
        self.grad_sample_mode: GradSampleMode = grad_sample_mode
        self.delta = float(delta)
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.sample_id_fn = sample_id_fn
        self._state_key = state_key or type(self).__name__
        self.loss_reduction: LossWeights = loss_reduction
        self.num_samples = num_samples
        self.exclude_unsupported = exclude_unsupported
        if isinstance(exclude, str) or not all(isinstance(n, str) for n in exclude):
            raise ValueError(
                f"Expected `exclude` to be a sequence of qualified parameter names, but got "
                f"{exclude!r}."
            )
        self.exclude = tuple(exclude)
        self.log_histograms = log_histograms
        self.flush_every = flush_every
        self.self_check = bool(self_check)
        self.self_check_samples = self_check_samples
        self.self_check_result: SelfCheckResult | None = None
        self._self_check_pending = False
        self._weights: Tensor | None = None  # per-example loss weights of the current batch
        self._backwards = 0  # backward passes since the batch started or the optimizer stepped

        self._ledger: PrivacyLedger | None = None
        self._pending: PrivacyLedger | None = None  # per-rank additions since the last reduction
        self._hooks: NormHooks | None = None
        self._loaded_state: dict[str, Any] | None = None
        self._ids: Tensor | None = None
        self._tracked: Tensor | None = None  # [N] bool on the device
        self._nonfinite: Tensor | None = None  # device flag, checked at epoch end
        self._data: Any = None
        self._q = 1.0
        self._global_batch = 1
        self._accum = 1
        self._world_size = 1
        self._steps = 0
        self._last_sweep = 0
        self._worst = WorstCaseAccountant(self.noise, self.alphas)
        self._first_batch = True
        self._buffer = StepBuffer()  # steps not yet added to the ledger (`_flush`)
        self._custom_step_loss = False  # `per_step_loss` overridden: buffer losses, not ratios
        self._id_source = SampleIdSource(sample_id_fn)  # explicit ids, else the sampler's

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
        return self._worst.epsilon(self.delta)

    # ------------------------------------------------------------------ lifecycle
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hooks = self._attach_hooks(pl_module)
        self._id_source.install(trainer)  # before Lightning iterates the training loader

    def _attach_hooks(self, pl_module: pl.LightningModule) -> NormHooks:
        return attach_norm_hooks(
            pl_module,
            self.grad_sample_mode,
            loss_reduction=engine_reduction(self.loss_reduction),
            exclude_unsupported=self.exclude_unsupported,
            exclude=self.exclude,
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()  # nothing should be left, but never carry steps into another ledger
        method = getattr(self.per_step_loss, "__func__", None)
        self._custom_step_loss = method is not PerInstancePrivacyMonitor.per_step_loss
        loader_data = find_train_data(trainer)
        id_data, id_size = self._id_source.id_space(
            loader_data.dataset if loader_data is not None else None
        )
        plan = plan_run(
            trainer, pl_module.automatic_optimization, self.num_samples, self.sample_rate, id_size
        )
        n = plan.num_samples
        self._data = (
            plan.data
            if id_size is None or plan.data is None
            else replace(plan.data, dataset=id_data, num_samples=id_size)
        )
        self._accum, self._global_batch, self._q = (
            plan.accumulate,
            plan.global_batch,
            plan.sample_rate,
        )
        self._world_size = trainer.world_size
        device = pl_module.device
        metadata = {
            "num_samples": n,
            "dataset_fingerprint": (
                dataset_fingerprint(self._data.dataset, n) if self._data is not None else None
            ),
            # The recording configuration `unlearn` checks (lightning_unlearn.integrity).
            "model_fingerprint": architecture_fingerprint(pl_module),
            "batch_size": plan.global_batch,
            "noise_multiplier": self.noise.noise_multiplier,
            "max_grad_norm": self.noise.max_grad_norm,
            "estimator": self.estimator,
            "sample_rate": self._q,
            "loss_reduction": describe(self.loss_reduction),
            "grad_sample_mode": self.grad_sample_mode,
            "world_size": trainer.world_size,
            "delta": self.delta,
        }
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
        self._tracked = None
        if self.track_ids is not None:
            ids = self.track_ids
            if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= n:
                raise ValueError(f"Expected `track_ids` to be non-empty ids in [0, {n}).")
            self._tracked = torch.zeros(n, dtype=torch.bool, device=device)
            self._tracked[ids.to(device)] = True
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._first_batch = True
        self._self_check_pending = self.self_check
        self._id_source.attach(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # on_after_backward gets no batch: keep the ids of this one (PLATFORM.md).
        ids = self._id_source.batch_ids(batch)
        if self._first_batch or ids.device.type == "cpu":
            n = self._require_ledger().num_samples
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
                raise ValueError(
                    f"Expected sample ids in [0, {n}) (the ledger's size: `num_samples`, default "
                    f"the size of the training DataLoader's dataset), but got ids in "
                    f"[{int(ids.min())}, {int(ids.max())}]. Ids carried by the batch must index "
                    "that dataset (or the `IndexedDataset` beneath its `Subset` layers); pass "
                    "`num_samples=` the size of the set your ids index."
                )
            self._first_batch = False
            if callable(self.loss_reduction):
                check_loss_weights(loss_weights_of(self.loss_reduction, batch), ids.shape[0])
        self._ids = ids
        self._weights = loss_weights_of(self.loss_reduction, batch)
        self._backwards = 0
        if self._self_check_pending:
            self._self_check_pending = False
            self.self_check_result = run_self_check(self, trainer, pl_module, batch, batch_idx, ids)
        if self._hooks is not None:
            self._hooks.clear()  # drop anything left by a backward the monitor did not see
            # Inputs broadcast over the batch (HF's [1, T] position_ids) are expanded to it.
            self._hooks.expect_batch_size(ids.shape[0])

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hooks is None or self._ids is None:
            return
        self._backwards += 1
        if self._backwards > 1:
            raise MultipleBackwardError(
                f"Expected one backward pass per batch and optimizer step, but got "
                f"{self._backwards} for this batch before the optimizer stepped (two "
                "`manual_backward` calls, or an optimizer that re-evaluates its closure such as "
                "LBFGS): every pass sees one part of the examples' gradient, and the norm of the "
                "sum is not given by the parts' norms, so the privacy losses would be wrong. Add "
                "the losses and call `manual_backward` once per optimizer step "
                "(`self.manual_backward(loss_a + loss_b)`)."
            )
        norms = undo_loss_weights(self._hooks.per_sample_norms(), self._weights)
        self._hooks.clear()
        ids = self._ids.to(norms.device)
        if ids.shape[0] != norms.shape[0]:
            raise ValueError(
                f"Expected one gradient norm per sample id, but got {norms.shape[0]} norms for "
                f"{ids.shape[0]} ids. The module's layers must see the batch (batch-first) "
                "that carries the ids; use `sample_id_fn` for custom batches."
            )
        if self._accum > 1:
            norms = norms * self._accum  # Lightning divided the loss by accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            finite = torch.isfinite(norms)
            scale = getattr(scaler, "_get_scale_async", scaler.get_scale)()
            norms = norms / torch.as_tensor(scale, device=norms.device, dtype=norms.dtype)
            # Overflow steps are skipped by the GradScaler: they contribute nothing.
            norms = torch.where(finite, norms, torch.zeros_like(norms))
        else:
            self._check_step_norms(norms, ids)
        self._record(trainer, ids, norms)

    def _check_step_norms(self, norms: Tensor, ids: Tensor) -> None:
        """NaN/inf norms: raise at once on a single CPU process (free there); otherwise set a
        device flag checked at the end of the epoch, so the step never waits for the device and
        all DDP ranks raise together (one rank raising alone would leave the others hanging)."""
        finite = torch.isfinite(norms)
        if norms.device.type == "cpu" and self._world_size == 1:
            if not bool(finite.all()):
                raise nonfinite_error(ids[~finite.to(ids.device)])
        elif self._nonfinite is not None:
            self._nonfinite |= ~finite.all()

    def _record(self, trainer: pl.Trainer, ids: Tensor, norms: Tensor) -> None:
        """Buffer one step; what depends on the step (lr, batch) is evaluated now."""
        values: Tensor | None = None  # sweep estimator: counts and norms only
        if self.estimator == "online":
            # The global batch of this step (a short last batch included), for "sgld".
            batch = ids.shape[0] * trainer.world_size * self._accum
            if self._custom_step_loss:  # its semantics are per step: call it per step
                values = self.per_step_loss(norms, trainer, batch) * (1.0 / self._q)
            else:
                values = self.noise.ratios(norms, lr=_step_lr(trainer), batch_size=batch)
        self._buffer.append(ids, values, norms)
        if len(self._buffer) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        """Add the buffered steps to the ledger (``_pending`` under DDP) in one update.

        The same rows as one update per step: the per-step loss is elementwise in the ratios,
        sums do not depend on the order and ``last_norm`` takes the last row of each id.
        """
        target = self._pending if self._pending is not None else self._ledger
        drained = self._buffer.drain() if target is not None else None
        if drained is None or target is None:
            return
        ids, values, norms = drained
        if values is None:
            rdp = norms.new_zeros((norms.shape[0], len(self.alphas)), dtype=torch.float64)
        else:
            rdp = (
                values
                if self._custom_step_loss
                else step_rdp_in_pieces(values, self._q, self.alphas) * (1.0 / self._q)
            )
            if self._tracked is not None:
                rdp = rdp * self._tracked[ids].unsqueeze(1)
        update_in_step_order(target, ids, rdp, norms)

    def per_step_loss(self, norms: Tensor, trainer: pl.Trainer, batch_size: int) -> Tensor:
        """Per-step per-instance Rényi loss of ``norms`` (THEORY §1-§2), ``[B, K]`` float64.

        Overridable, e.g. for a learning-rate dependent convention of your own. An override is
        called once per backward pass (and per sweep batch); the default is evaluated in
        batches of ``flush_every`` steps, from each step's ratios.
        """
        ratios = self.noise.ratios(norms, lr=_step_lr(trainer), batch_size=batch_size)
        return per_step_rdp(ratios, self._q, self.alphas)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        self._backwards = 0  # the next backward belongs to the next step
        if trainer.optimizers and optimizer is not trainer.optimizers[0]:
            return
        self._steps += 1
        lr = float(optimizer.param_groups[0]["lr"])
        self._worst.step(lr, self._global_batch, self._q)

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
        if self.estimator == "sweep" and self._steps - self._last_sweep >= self.sweep_every:
            self._sweep(trainer, pl_module, self._steps - self._last_sweep)

    def _sweep(self, trainer: pl.Trainer, pl_module: pl.LightningModule, weight: int) -> None:
        assert self._hooks is not None
        self._flush()
        if self._data is None:
            raise ValueError(
                "Expected a single map-style training DataLoader for `estimator='sweep'`, but "
                "got another kind of training data; use `estimator='online'`."
            )
        tracked = (
            self.track_ids if self.track_ids is not None else torch.arange(self.ledger.num_samples)
        )
        target = self._pending if self._pending is not None else self.ledger
        run_sweep(
            trainer,
            pl_module,
            self._hooks,
            self._data,
            tracked,
            target,
            weight,
            sweep_loss=self.sweep_loss,
            step_loss=lambda norms: self.per_step_loss(norms, trainer, self._global_batch),
            check_norms=self._check_step_norms,
            sample_id_fn=self.sample_id_fn,
        )
        self._last_sweep = self._steps

    def sweep_loss(self, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> Tensor:
        """The loss of one sweep batch; by default ``pl_module.training_step``'s loss.

        Override for manual optimisation (whose ``training_step`` steps the optimizer) or to
        sweep with another loss. Logging calls inside are silenced during the sweep.
        """
        out = pl_module.training_step(batch, batch_idx)
        loss = out["loss"] if isinstance(out, dict) else out
        if not isinstance(loss, Tensor):
            raise ValueError(
                "Expected `training_step` to return the loss (a tensor or a dict with 'loss') for "
                f"the sweep, but got {type(out).__name__}; override `sweep_loss`."
            )
        return loss

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
        self._check_finite(trainer)

    def _check_finite(self, trainer: pl.Trainer) -> None:
        if self._nonfinite is None:
            return
        flag = self._nonfinite
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag.int(), reduce_op="max")
        if bool(flag):
            raise nonfinite_error(None)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer)
        self._log(trainer)

    def _report_mask(self) -> Tensor:
        ledger = self.ledger
        mask = ledger.counts > 0 if self.estimator == "online" else ledger.privacy[:, 0] > 0
        return mask if self._tracked is None else mask & self._tracked

    def _log(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        mask = self._report_mask()
        metrics = epoch_metrics(self.ledger, mask, self.delta, self._worst.rdp)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.log_histograms:
            write_histograms(trainer.loggers, self.ledger, mask, trainer.global_step)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()
        if self.estimator == "sweep" and self._steps > self._last_sweep:
            self._sweep(trainer, pl_module, self._steps - self._last_sweep)
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
        if self.save_dir is None or not trainer.is_global_zero:
            return
        self._ledger.save(self.save_dir / "privacy_ledger.pt")
        self._ledger.to_csv(self.save_dir / "privacy_ledger.csv", delta=self.delta)

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
        steps = len(self._buffer)
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
            "last_sweep": self._last_sweep,
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
        self._last_sweep = int(state["last_sweep"])
        worst = state["worst_case_rdp"]
        self._worst.rdp = None if worst is None else worst.to(torch.float64).clone()

    def _check_resume(self, saved: dict[str, Any], what: str) -> None:
        check_resume(saved, self.ledger.metadata, what)


def _step_lr(trainer: pl.Trainer) -> float | None:
    """The learning rate of the current step: the first optimizer's first param group."""
    return float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
