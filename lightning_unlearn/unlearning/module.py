"""UnlearningModule: unlearn a forget set from any LightningModule by continuing to train it."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import SGD, Optimizer
from typing_extensions import override

from lightning_unlearn.data.indexed import get_sample_ids
from lightning_unlearn.data.splits import TaggedBatch
from lightning_unlearn.errors import MissingSampleIdError, UnsupportedModuleError
from lightning_unlearn.evaluation.functional.adapters import AdapterLike, as_adapter
from lightning_unlearn.unlearning.calibrated_stopping import CalibratedStopping
from lightning_unlearn.unlearning.result import UnlearningResult, evaluate_splits
from lightning_unlearn.unlearning.sgld import SGLD, check_sgld_sigma
from lightning_unlearn.unlearning.stopping import LossCalibratedStopping

__all__ = [
    "METHODS",
    "Method",
    "UnlearningModule",
    "method_recipe",
    "module_state_dict_from_checkpoint",
]

Method = Literal["finetune", "sgld", "neggrad", "neggrad_plus", "l1_sparse", "random_label"]
METHODS: tuple[str, ...] = get_args(Method)
_NEEDS_FORGET = ("neggrad", "neggrad_plus", "random_label")
_CKPT_KEY = "lightning_unlearn/unlearning"
# The arguments each method's optimisation depends on (the rest are ignored by it).
_RECIPE_KEYS: dict[str, tuple[str, ...]] = {
    "finetune": ("lr", "momentum", "weight_decay"),
    "sgld": ("lr", "weight_decay", "sgld_sigma", "max_grad_norm", "projection_radius"),
    "neggrad": ("lr", "momentum", "weight_decay"),
    "neggrad_plus": ("lr", "momentum", "weight_decay", "forget_weight"),
    "l1_sparse": ("lr", "momentum", "weight_decay", "l1_weight"),
    "random_label": ("lr", "momentum", "weight_decay", "num_classes"),
}


def method_recipe(method: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The settings an :class:`UnlearningModule` of ``method`` built with ``arguments`` runs
    with: the method and the arguments its optimisation depends on, defaults filled in (what a
    budget calibration and the request it budgets must share).

    Example:
        >>> method_recipe("finetune", {"lr": 0.1, "sgld_sigma": 0.5})  # SGLD's sigma: ignored
        {'method': 'finetune', 'lr': 0.1, 'momentum': 0.0, 'weight_decay': 0.0}
        >>> method_recipe("sgld", {"lr": 0.1})["sgld_sigma"]  # the default, filled in
        0.01
    """
    defaults = {
        name: p.default
        for name, p in inspect.signature(UnlearningModule.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    keys = _RECIPE_KEYS.get(method, ())
    return {"method": method, **{k: arguments.get(k, defaults[k]) for k in keys}}


OptimizerFactory = Callable[[Iterator[nn.Parameter]], Optimizer]


class UnlearningModule(pl.LightningModule):
    r"""Unlearn a forget set from a trained LightningModule by continued (noisy) training.

    The user's module is kept as the direct child ``self.module``, so its parameters keep
    their names under the prefix ``module.`` and the unlearned model *is* the user's object:
    ``unlearner.module`` (or :meth:`unlearned_module`) has the user's class and exactly the
    original ``state_dict`` keys. Only the forget/retain logic lives here; the loss on a batch
    is the user's own ``training_step`` (through the overridable :meth:`retain_loss` and
    :meth:`forget_loss`).

    Train it on a :class:`~lightning_unlearn.ForgetRetainDataModule`, whose batches are
    ``{"retain": batch, "forget": TaggedBatch(batch, sample_ids)}`` (``batch``: the data set's
    own batches, what the user's ``training_step`` was written for), with the step budget as
    the trainer's limit::

        budget = compute_budget(ledger, dm, calibration="calibration.json")  # issue 15
        unlearner = UnlearningModule(model, method="finetune")
        trainer = Trainer(max_steps=budget, callbacks=[CalibratedStopping(rule)])
        trainer.fit(unlearner, datamodule=dm)
        result = unlearner.result  # UnlearningResult; unlearner.module is the model

    With reference models (``rule = OutRule.from_reference(stats)``) the stop rule is the
    per-example :class:`~lightning_unlearn.unlearning.calibrated_stopping.CalibratedStopping`,
    and :func:`~lightning_unlearn.unlearning.request_report.calibrated_unlearn` runs this whole
    path with a report. Without them, :class:`LossCalibratedStopping` (forget vs typical
    held-out losses) and THEORY §5's budget (``constants=``) remain; the former fires at once
    for atypical forget sets and never for easy ones (``docs/calibrated_unlearning.md``).

    Before the first step and at the end, the module evaluates loss and accuracy on the forget,
    retain and held-out sets of a :class:`~lightning_unlearn.ForgetRetainDataModule` (on every
    rank under DDP: the replicas are identical, the sets are not sharded) and keeps them in
    :attr:`result` (an :class:`~lightning_unlearn.unlearning.UnlearningResult`, set when
    ``fit`` ends normally).

    The module is unlearned in training mode, as it was trained. One left entirely in eval mode
    (by an evaluation) is switched to training mode at ``fit`` start, with a warning; layers
    set to eval mode on purpose while the rest trains (frozen BatchNorm) stay so.

    Methods (loss per step; :math:`L_R`: user's loss on a retain batch, :math:`L_F`: on a
    forget batch):

    ============== ============================================= ===============================
    method         objective                                     reference
    ============== ============================================= ===============================
    finetune       :math:`L_R` with SGD                           Golatkar et al. 2020; [S25]
    sgld           :math:`L_R` with :class:`SGLD` (THEORY §1)     Chien et al. 2024 [C24]
    neggrad        :math:`-L_F` (gradient ascent on F)            Thudi et al. 2022
    neggrad_plus   :math:`(1-w) L_R - w L_F`                      Kurmanji et al. 2023 (SCRUB)
    l1_sparse      :math:`L_R + \gamma \|\theta\|_1`              Jia et al. 2023
    random_label   :math:`L_R + L_F` with random wrong labels     Graves et al. 2021
    ============== ============================================= ===============================

    Fine-tuning on the retain set is the procedure whose step count [S25] ties to the
    per-instance privacy loss; with SGLD it is the noisy process analysed in THEORY §5.

    Args:
        module: the trained LightningModule (any module with a ``training_step`` returning the
            loss or a dict with ``"loss"``; subclasses may override :meth:`retain_loss` /
            :meth:`forget_loss` instead).
        method: one of ``METHODS``.
        lr: learning rate of the default optimizer.
        momentum: momentum of the default SGD optimizer (not used by ``"sgld"``).
        weight_decay: weight decay of the default optimizer.
        sgld_sigma: :math:`\sigma > 0` of :class:`SGLD` (``"sgld"`` only; THEORY §1's SGLD
            convention). Not the training run's accounting ``noise_multiplier``; to unlearn
            within the THEORY §5 budget run SGLD at the bound's ``langevin_sigma``.
        max_grad_norm: batch-gradient clipping bound of :class:`SGLD` (``"sgld"`` only; use
            ``Trainer(gradient_clip_val=...)`` for the other methods).
        projection_radius: parameter-ball radius of :class:`SGLD` (``"sgld"`` only).
        forget_weight: :math:`w \in [0, 1]` of ``"neggrad_plus"``.
        l1_weight: :math:`\gamma \ge 0` of ``"l1_sparse"``.
        num_classes: number of classes for ``"random_label"`` (default: the width of the
            module's output on the first forget batch).
        optimizer: optional factory ``params -> Optimizer`` replacing the default optimizer
            (or override :meth:`configure_optimizers`).
        seed: seed of the SGLD noise and of the random labels.
        batch_adapter: how the evaluations (:attr:`result`, :class:`LossCalibratedStopping`)
            and ``"random_label"`` read a batch: per-example loss, logits and targets (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`). Default: ``(x, y, ...)``
            classification, or Hugging Face-style dicts (``input_ids``, ``labels``, model
            output with ``.logits``); pass a ``BatchAdapter`` or a function
            ``(model, batch) -> (loss, logits, targets)`` for anything else.

    Raises:
        UnsupportedModuleError: ``module`` is not a LightningModule with a ``training_step``.
        ValueError: an unknown method or an out-of-range hyper-parameter
            (:class:`~lightning_unlearn.errors.InvalidArgumentError` for ``sgld_sigma <= 0``).

    Example:
        >>> import torch, lightning.pytorch as pl
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 3)
        ...     def forward(self, x):
        ...         return self.fc(x)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return torch.nn.functional.cross_entropy(self(x), y)
        >>> net = Net()
        >>> unlearner = UnlearningModule(net, method="sgld", lr=0.01, sgld_sigma=0.1)
        >>> unlearner.unlearned_module() is net
        True
        >>> sorted(unlearner.state_dict()) == sorted("module." + k for k in net.state_dict())
        True
    """

    def __init__(
        self,
        module: pl.LightningModule,
        method: Method = "finetune",
        *,
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        sgld_sigma: float = 0.01,
        max_grad_norm: float | None = None,
        projection_radius: float | None = None,
        forget_weight: float = 0.5,
        l1_weight: float = 1e-4,
        num_classes: int | None = None,
        optimizer: OptimizerFactory | None = None,
        seed: int = 0,
        batch_adapter: AdapterLike | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"Expected `method` to be one of {list(METHODS)}, but got {method!r}.")
        if not isinstance(module, nn.Module):
            raise UnsupportedModuleError(
                f"Expected `module` to be a LightningModule, but got {type(module).__name__}."
            )
        if isinstance(module, UnlearningModule):
            raise UnsupportedModuleError(
                "Expected the user's module, but got an `UnlearningModule`; pass its `.module`."
            )
        uses_default_loss = type(self).retain_loss is UnlearningModule.retain_loss
        if uses_default_loss and not _has_training_step(module):
            raise UnsupportedModuleError(
                f"Expected `module` ({type(module).__name__}) to define `training_step(batch, "
                "batch_idx)` returning the loss, but it has none; implement it, or subclass "
                "`UnlearningModule` and override `retain_loss` / `forget_loss`."
            )
        if not lr > 0:
            raise ValueError(f"Expected `lr` to be > 0, but got {lr!r}.")
        if method == "sgld":
            check_sgld_sigma(sgld_sigma, "sgld_sigma")
        if not l1_weight >= 0:
            raise ValueError(f"Expected `l1_weight` to be >= 0, but got {l1_weight!r}.")
        if not 0.0 <= forget_weight <= 1.0:
            raise ValueError(f"Expected `forget_weight` in [0, 1], but got {forget_weight!r}.")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"Expected `num_classes` >= 2 or None, but got {num_classes!r}.")
        self.module = module
        self.method: str = method
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.sgld_sigma = sgld_sigma
        self.max_grad_norm, self.projection_radius = max_grad_norm, projection_radius
        self.forget_weight, self.l1_weight = forget_weight, l1_weight
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.seed = seed
        self.batch_adapter = as_adapter(batch_adapter)
        self.before: dict[str, Any] | None = None
        self.result: UnlearningResult | None = None
        self.save_hyperparameters(ignore=["module", "optimizer", "batch_adapter"])

    # --- the unlearned model -------------------------------------------------------------
    def unlearned_module(self) -> pl.LightningModule:
        """The user's module (same object, class and ``state_dict`` keys), now unlearned."""
        return self.module

    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    # --- overridable losses -------------------------------------------------------------
    def retain_loss(self, batch: Any, batch_idx: int) -> Tensor:
        """The loss on a retain batch: the user's ``training_step`` (its logging kept)."""
        with self._delegate_logging(enabled=True):
            return _as_loss(self.module.training_step(batch, batch_idx), "training_step")

    def forget_loss(self, batch: Any, batch_idx: int) -> Tensor:
        """The loss on a forget batch: the user's ``training_step`` with its logging muted."""
        with self._delegate_logging(enabled=False):
            return _as_loss(self.module.training_step(batch, batch_idx), "training_step")

    def relabel(self, batch: Any, sample_ids: Tensor | None = None) -> Any:
        """Give a forget batch random wrong labels (``"random_label"``; overridable).

        The new label of example ``i`` with label ``y`` is
        ``(y + 1 + h(i)) mod C`` with ``h`` a seeded hash of the sample id into ``[0, C-1)``,
        so it never equals ``y`` and is the same every time ``i`` is drawn. The labels are read
        and replaced through ``batch_adapter`` (``targets`` / ``with_targets``).

        Args:
            batch: the forget batch.
            sample_ids: its ids (from the :class:`~lightning_unlearn.data.TaggedBatch`); default
                the ids the batch carries.
        """
        if sample_ids is None:
            try:
                sample_ids = get_sample_ids(batch)
            except MissingSampleIdError:
                raise MissingSampleIdError(
                    "Expected the ids of the forget batch for 'random_label', but it carries "
                    "none; fit with a `ForgetRetainDataModule` (its forget batches come with "
                    "their ids) or pass `sample_ids`."
                ) from None
        adapter = self.batch_adapter
        target = adapter.targets(batch)
        if not isinstance(target, Tensor) or target.dim() != 1:
            raise ValueError(
                "Expected one integer label per example for 'random_label', but the "
                f"`batch_adapter` gave {type(target).__name__}; override "
                "`UnlearningModule.relabel`."
            )
        num_classes = self.num_classes or self._infer_num_classes(batch)
        mix = (sample_ids * 2654435761 + self.seed * 97 + 12345) % 2147483647
        new = (target + 1 + mix.to(target.device) % (num_classes - 1)) % num_classes
        return adapter.with_targets(batch, new)

    def _infer_num_classes(self, batch: Any) -> int:
        with torch.no_grad():
            logits = self.batch_adapter(self.module, batch).logits
        if logits is None or logits.dim() != 2:
            raise ValueError(
                "Expected class logits [B, C] from the `batch_adapter` to infer the number of "
                "classes for 'random_label', but it gave none; pass `num_classes=`."
            )
        self.num_classes = int(logits.shape[-1])
        return self.num_classes

    def unlearning_loss(self, retain: Any, forget: Any, batch_idx: int) -> Tensor:
        """The objective of ``self.method`` on one step (see the table in the class docstring)."""
        if self.method in ("finetune", "sgld"):
            return self.retain_loss(retain, batch_idx)
        if self.method == "l1_sparse":
            l1 = sum(p.abs().sum() for p in self.module.parameters())
            return self.retain_loss(retain, batch_idx) + self.l1_weight * l1
        if self.method == "neggrad":
            return -self.forget_loss(forget, batch_idx)
        if self.method == "neggrad_plus":
            w = self.forget_weight
            return (1 - w) * self.retain_loss(retain, batch_idx) - w * self.forget_loss(
                forget, batch_idx
            )
        # random_label
        forget_ids = None
        if isinstance(forget, TaggedBatch):
            forget, forget_ids = forget.batch, forget.sample_ids
        return self.retain_loss(retain, batch_idx) + self.forget_loss(
            self.relabel(forget, forget_ids), batch_idx
        )

    # --- Lightning hooks ----------------------------------------------------------------
    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if isinstance(batch, Mapping) and "retain" in batch:
            retain, forget = batch["retain"], batch.get("forget")
        else:
            retain, forget = batch, None
        if forget is None and self.method in _NEEDS_FORGET:
            raise ValueError(
                f"Expected batches {{'retain': ..., 'forget': ...}} for method {self.method!r}, "
                "but got no forget batch; fit with a `ForgetRetainDataModule`."
            )
        if isinstance(forget, TaggedBatch) and self.method != "random_label":
            forget = forget.batch  # the user's own batch; only relabelling needs the ids
        loss = self.unlearning_loss(retain, forget, batch_idx)
        self.log("unlearn/train_loss", loss.detach(), prog_bar=True)
        return loss

    @override
    def configure_optimizers(self) -> Optimizer:
        """The default optimizer of the method (SGLD for ``"sgld"``, SGD otherwise) or the
        user's factory."""
        params = self.module.parameters()
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        if self.method == "sgld":
            return SGLD(
                params,
                lr=self.lr,
                sigma=self.sgld_sigma,
                max_grad_norm=self.max_grad_norm,
                projection_radius=self.projection_radius,
                weight_decay=self.weight_decay,
                seed=self.seed,
            )
        return SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    @override
    def on_fit_start(self) -> None:
        # Lightning keeps every module's mode: a module left in eval mode by an evaluation
        # would be unlearned with dropout off and BatchNorm frozen, not with its recipe.
        if not any(m.training for m in self.module.modules()):
            rank_zero_warn(
                f"The module to unlearn ({type(self.module).__name__}) is entirely in eval mode "
                "(left so by an evaluation?); unlearning trains it in training mode, as it was "
                "trained. To keep some layers in eval mode (e.g. frozen BatchNorm), set just "
                "those with `.eval()`."
            )
            self.module.train()

    @override
    def on_train_start(self) -> None:
        if self.before is None and _evaluable(self.trainer):
            self.before = evaluate_splits(
                self.module, _datamodule(self.trainer), batch_adapter=self.batch_adapter
            )

    @override
    def on_train_end(self) -> None:
        trainer = self.trainer
        stoppers = [
            c
            for c in trainer.callbacks  # type: ignore[attr-defined]
            if isinstance(c, LossCalibratedStopping | CalibratedStopping)
        ]
        budget = trainer.max_steps if trainer.max_steps >= 0 else None
        if any(s.stopped_step is not None for s in stoppers):
            reason = "calibrated"
        elif budget is not None and trainer.global_step >= budget:
            reason = "budget"
        else:
            reason = "other"
        dm = _datamodule(trainer) if _evaluable(trainer) else None
        self.result = UnlearningResult(
            method=self.method,
            steps=int(trainer.global_step),
            budget=budget,
            stop_reason=reason,
            num_forget=int(dm.forget_ids.numel()) if dm is not None else 0,
            before=self.before or {},
            after=(
                evaluate_splits(self.module, dm, batch_adapter=self.batch_adapter)
                if dm is not None
                else {}
            ),
            trajectory=[dict(r) for s in stoppers for r in s.trajectory],
        )

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[_CKPT_KEY] = {"version": 1, "method": self.method, "before": self.before}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(_CKPT_KEY)
        if state is None:
            return
        if state.get("method") != self.method:
            raise ValueError(
                f"Expected a checkpoint of method {self.method!r}, but it was saved by method "
                f"{state.get('method')!r}; build the UnlearningModule with the same method."
            )
        self.before = state.get("before")

    @contextlib.contextmanager
    def _delegate_logging(self, *, enabled: bool) -> Iterator[None]:
        """Let the user's ``self.log`` calls work inside our hook (or mute them)."""
        inner = self.module
        if not isinstance(inner, pl.LightningModule):
            yield
            return
        saved = inner._current_fx_name
        inner._current_fx_name = self._current_fx_name
        if not enabled:
            inner.log = _no_log  # type: ignore[method-assign]
        try:
            yield
        finally:
            inner._current_fx_name = saved
            if not enabled:
                del inner.log


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


def _has_training_step(module: nn.Module) -> bool:
    step = getattr(type(module), "training_step", None)
    return step is not None and step is not pl.LightningModule.training_step


def _as_loss(output: Any, where: str) -> Tensor:
    if isinstance(output, Mapping):
        output = output.get("loss")
    if not isinstance(output, Tensor) or output.dim() != 0:
        raise UnsupportedModuleError(
            f"Expected `{where}` to return a scalar loss tensor (or a dict with 'loss'), but got "
            f"{type(output).__name__}; return the mean loss of the batch, or override "
            "`retain_loss` / `forget_loss`."
        )
    return output


def _datamodule(trainer: pl.Trainer) -> Any:
    return getattr(trainer, "datamodule", None)


def _evaluable(trainer: pl.Trainer) -> bool:
    dm = getattr(trainer, "datamodule", None)
    return dm is not None and hasattr(dm, "forget_dataloader") and hasattr(dm, "forget_ids")


def module_state_dict_from_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The user's ``state_dict`` stored in an ``UnlearningModule`` checkpoint.

    Strips the ``module.`` prefix, so the result loads into a fresh instance of the user's
    class with ``load_state_dict``. Loads with ``weights_only=True``.

    Args:
        path: a Lightning checkpoint written while training an ``UnlearningModule``.

    Returns:
        The wrapped module's ``state_dict``.

    Raises:
        KeyError: the checkpoint holds no ``module.`` weights.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    out = {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}
    if not out:
        raise KeyError(
            f"Expected `module.*` weights in {path}, but found none; is it a checkpoint of an "
            "`UnlearningModule`?"
        )
    return out
