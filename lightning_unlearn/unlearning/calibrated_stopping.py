"""Stop unlearning when every forget example looks like its own OUT distribution (issue 15).

:class:`LossCalibratedStopping` compares the forget set with *typical* held-out data, so it fires
at once for atypical (high-P) sets and never for easy (low-P) ones (see
``docs/tutorials/demo.md``). The rule here compares every forget example with *itself* under
the reference models that never trained on it (THEORY §6; U-LiRA, Hayes et al. 2024; LiRA's
offline test, Carlini et al. 2022):

1. :class:`OutRule` fits each example's OUT law from :class:`ReferenceStatistics`, and derives
   two tolerances from the reference models themselves: every reference model is scored on the
   examples *it* never trained on against the other OUT models, read through its own held-out
   map exactly as a tested model is (null draws of the score). Their false-flag rates give the
   number of flagged examples a never-trained-on set of ``E`` examples shows (a mixture of
   binomials, :func:`~lightning_unlearn.evaluation.functional.out_score.flagged_tolerance`),
   and their means of ``E`` draws the set's mean score
   (:func:`~lightning_unlearn.evaluation.functional.out_score.mean_score_tolerance`); each
   tolerance is a ``1 - level`` quantile.
2. :class:`CalibratedStopping` scores the forget set after every optimizer step and stops the
   run once both the number of flagged examples and the mean score have stayed within their
   tolerances for ``hold + 1`` consecutive steps.

The tested model (trained on all of ``D``) is more confident on unseen data than reference
models trained on halves, and not uniformly: its held-out values are mapped onto the reference
models' by a weighted line in value space (:func:`~lightning_unlearn.evaluation.functional.
out_score.fit_heldout_map`), refitted at every check, so the scores compare it with what *it*
would do on an example it never saw.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_unlearn.evaluation.functional.adapters import AdapterLike
from lightning_unlearn.evaluation.functional.out_score import (
    IDENTITY_MAP,
    HeldoutMap,
    OutGaussian,
    detection_power,
    fit_heldout_map,
    flagged_tolerance,
    mean_score_tolerance,
    member_rates,
    null_and_member_zscores,
    out_gaussian,
    out_zscores,
)
from lightning_unlearn.integrity import load_verified, save_verified
from lightning_unlearn.unlearning._stop_state import TrajectoryStopCallback
from lightning_unlearn.unlearning.reference import ReferenceModels, ReferenceModelsError
from lightning_unlearn.unlearning.reference_stats import Metric, ReferenceStatistics, score_model

__all__ = [
    "CalibratedStopping",
    "OutRule",
    "ReferenceCoverageError",
    "reference_heldout_values",
]

_STATE_VERSION = 2
_RULE_KIND = "lightning_unlearn.out_rule"


class ReferenceCoverageError(ReferenceModelsError):
    """The reference models cannot judge some forget example (no, or too few, OUT models for
    it; an id outside their data set; a held-out example they were not scored on)."""


def reference_heldout_values(
    refs: ReferenceModels,
    heldout_dataloader: Any,
    metric: Metric = "phi",
    *,
    batch_adapter: AdapterLike | None = None,
) -> tuple[Tensor, Tensor]:
    """``(values [K, H], heldout_ids [H])`` of every reference model on a held-out set.

    No reference model trained on held-out data, so these values show how confident models of
    the recipe are on unseen data (:func:`~lightning_unlearn.evaluation.functional.out_score.
    fit_heldout_map`). Sorted by id. ``batch_adapter`` reads the batches (default: ``(x, y,
    ...)`` or Hugging Face dicts; see :mod:`~lightning_unlearn.evaluation.functional.adapters`).
    """
    rows, ids = [], None
    for module in refs.modules:
        phi, loss, got = score_model(module, heldout_dataloader, batch_adapter=batch_adapter)
        order = got.cpu().argsort()
        rows.append((phi if metric == "phi" else loss).double().cpu()[order])
        ids = got.cpu()[order].long()
    assert ids is not None
    return torch.stack(rows), ids


@dataclasses.dataclass(frozen=True)
class OutRule:
    """The per-example OUT test and its tolerance, fitted once from the reference models.

    Build it with :meth:`from_reference`. Attributes:

    Attributes:
        law: the OUT law of every training example (``[N]`` mean, shrunk std, count).
        rates: ``[K]`` each reference model's null rate of flagged OUT examples.
        null: ``[K, N]`` the null scores the rates and the mean tolerance are read from
            (``None``: a hand-built rule without a mean criterion).
        member: ``[K, N]`` the same scores of every reference model on its own members, the
            draws :meth:`power` is read from (``None``: power unknown, e.g. an older file).
        metric: ``"phi"`` or ``"loss"``.
        threshold: an example is flagged ("still looks trained on") when its score exceeds it.
        level: the tolerance is the ``1 - level`` quantile of the null count.
        prior_weight: pseudo-models of the variance shrinkage.
        heldout_ids: ``[H]`` ids of the held-out set the map is fitted on (or ``None``).
        heldout_law: the reference models' law on that set (or ``None``).
        min_out_models: fewest OUT models an example needs to be judged.
    """

    law: OutGaussian
    rates: Tensor
    metric: str = "phi"
    threshold: float = 2.0
    level: float = 0.05
    prior_weight: float = 2.0
    heldout_ids: Tensor | None = None
    heldout_law: OutGaussian | None = None
    min_out_models: int = 2
    null: Tensor | None = None
    member: Tensor | None = None
    _mean_tolerances: dict[int, float] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def direction(self) -> float:
        """``+1`` for ``phi`` (members are more confident), ``-1`` for the loss."""
        return 1.0 if self.metric == "phi" else -1.0

    @property
    def num_samples(self) -> int:
        """Size ``N`` of the reference models' training set."""
        return int(self.law.mean.shape[0])

    @classmethod
    def from_reference(
        cls,
        stats: ReferenceStatistics,
        *,
        metric: Metric = "phi",
        threshold: float = 2.0,
        level: float = 0.05,
        prior_weight: float = 2.0,
        heldout: tuple[Tensor, Tensor] | None = None,
        min_out_models: int = 2,
    ) -> OutRule:
        r"""Fit the rule: the OUT laws, and the null rates from leave-one-out scores.

        Model :math:`j`'s rate is :math:`\rho_j = \frac{1}{|O_j|} \sum_{i \in O_j}
        [z^{(-j)}_{j,i} > t]` over the examples :math:`O_j` it never trained on, with
        :math:`z^{(-j)}` the score against the other OUT models, read through model
        :math:`j`'s held-out map against the other models (the identity without ``heldout``).

        Args:
            stats: the reference models' tables (:meth:`ReferenceModels.statistics`).
            metric: ``"phi"`` (default, LiRA's) or ``"loss"``.
            threshold: the flagging threshold :math:`t` of the score.
            level: :math:`\beta` of the tolerance.
            prior_weight: :math:`\nu_0` of the variance shrinkage.
            heldout: ``(values [K, H], ids [H])`` from :func:`reference_heldout_values`, to read
                scores through the tested model's map on unseen data (strongly advised: without
                it a model trained on all of ``D`` is compared with models trained on halves).
            min_out_models: fewest OUT models per judged example (>= 2).

        Raises:
            ReferenceModelsError: arguments out of range, or ``heldout`` of another K.
        """
        if metric not in ("phi", "loss"):
            raise ReferenceModelsError(f"Expected `metric` 'phi' or 'loss', but got {metric!r}.")
        if not 0.0 < level < 1.0 or not math.isfinite(threshold) or min_out_models < 2:
            raise ReferenceModelsError(
                "Expected `level` in (0, 1), a finite `threshold` and `min_out_models` >= 2, "
                f"but got {level!r}, {threshold!r}, {min_out_models!r}."
            )
        values = stats.phi if metric == "phi" else stats.loss
        out_mask = ~stats.in_mask & ~values.isnan()
        direction = 1.0 if metric == "phi" else -1.0
        law = out_gaussian(values, out_mask, prior_weight=prior_weight)
        heldout_law = heldout_ids = ref_values = None
        if heldout is not None:
            ref_values, heldout_ids = heldout
            if ref_values.shape[0] != values.shape[0]:
                raise ReferenceModelsError(
                    f"Expected held-out values of the same K = {values.shape[0]} reference "
                    f"models, but got {ref_values.shape[0]} rows."
                )
            everyone = torch.ones_like(ref_values, dtype=torch.bool)
            heldout_law = out_gaussian(ref_values, everyone, prior_weight=prior_weight)
        null, member = null_and_member_zscores(
            values, out_mask, direction=direction, prior_weight=prior_weight, heldout=ref_values
        )
        rates = member_rates(null, threshold)
        return cls(
            law=law,
            rates=rates,
            metric=metric,
            threshold=float(threshold),
            level=float(level),
            prior_weight=float(prior_weight),
            heldout_ids=heldout_ids,
            heldout_law=heldout_law,
            min_out_models=min_out_models,
            null=null,
            member=member,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the rule (tensors and settings) with a checksum, atomically (``torch.save``)."""
        payload: dict[str, Any] = {
            "kind": _RULE_KIND,
            "version": _STATE_VERSION,
            "law": tuple(self.law),
            "rates": self.rates,
            "heldout_ids": self.heldout_ids,
            "heldout_law": None if self.heldout_law is None else tuple(self.heldout_law),
            "null": self.null,
            "member": self.member,
            "settings": {
                "metric": self.metric,
                "threshold": self.threshold,
                "level": self.level,
                "prior_weight": self.prior_weight,
                "min_out_models": self.min_out_models,
            },
        }
        return save_verified(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OutRule:
        """Read a rule written by :meth:`save` (``weights_only=True``, checksum verified).

        Raises:
            ReferenceModelsError: another kind of file or version.
            IntegrityError: the checksum does not match.
        """
        data = load_verified(path, what="OUT rule", hint="rebuild it with OutRule.from_reference")
        if data.get("kind") != _RULE_KIND or data.get("version") != _STATE_VERSION:
            raise ReferenceModelsError(
                f"Expected an OUT rule of version {_STATE_VERSION} in {str(path)!r}, but got kind "
                f"{data.get('kind')!r}, version {data.get('version')!r}; rebuild it."
            )
        held = data["heldout_law"]
        return cls(
            law=OutGaussian(*data["law"]),
            rates=data["rates"],
            heldout_ids=data["heldout_ids"],
            heldout_law=None if held is None else OutGaussian(*held),
            null=data["null"],
            member=data.get("member"),  # absent from files written before power was added
            **data["settings"],
        )

    def check_ids(self, sample_ids: Sequence[int] | Tensor) -> Tensor:
        """Validate forget ids against the reference models; returns them as a long tensor.

        Raises:
            ReferenceCoverageError: an id outside ``[0, N)``, or an example with fewer than
                ``min_out_models`` OUT models (its ids are named).
        """
        ids = torch.as_tensor(sample_ids, dtype=torch.long).flatten().cpu()
        n = self.num_samples
        bad = ids[(ids < 0) | (ids >= n)]
        if bad.numel():
            raise ReferenceCoverageError(
                f"Expected forget ids in [0, {n}) (the reference models' training set), but got "
                f"{bad[:10].tolist()}; the reference models were trained on another data set "
                f"(membership masks of size {n}): train them on this one."
            )
        few = ids[self.law.n.cpu()[ids] < self.min_out_models]
        if few.numel():
            raise ReferenceCoverageError(
                f"Forget examples {few[:10].tolist()} have fewer than {self.min_out_models} "
                "reference models that never trained on them, so their OUT distribution is "
                "unknown; train more reference models (a larger even `k`)."
            )
        return ids

    def tolerance(self, size: int) -> int:
        """The flagged-count tolerance of a set of ``size`` examples."""
        return flagged_tolerance(self.rates, size, self.level)

    def mean_tolerance(self, size: int) -> float:
        """The mean-score tolerance of a set of ``size`` examples (``inf`` without null draws)."""
        if self.null is None:
            return math.inf
        if size not in self._mean_tolerances:  # seeded, so computed once per size
            self._mean_tolerances[size] = mean_score_tolerance(self.null, size, self.level)
        return self._mean_tolerances[size]

    def power(self, sample_ids: Tensor) -> float | None:
        """The rule's :func:`detection_power` on these examples, with the tolerances of their
        set size (``None`` without member draws, or when some example has none: no reference
        model trained on it, so it is unknown)."""
        if self.member is None or self.null is None:
            return None
        ids = sample_ids.long().cpu()
        n = int(ids.numel())
        draws = self.member[:, ids]
        if bool(draws.isnan().all(dim=0).any()):
            return None
        return detection_power(
            draws,
            threshold=self.threshold,
            tolerance=self.tolerance(n),
            mean_tolerance=self.mean_tolerance(n),
        )

    def heldout_map(self, heldout_values: Tensor, heldout_ids: Tensor) -> HeldoutMap:
        """The tested model's :class:`HeldoutMap` from its held-out values (identity without a
        held-out law).

        Raises:
            ReferenceCoverageError: held-out ids the reference models were not scored on.
        """
        if self.heldout_law is None or self.heldout_ids is None:
            return IDENTITY_MAP
        ids = heldout_ids.long().cpu()
        pos = torch.searchsorted(self.heldout_ids, ids).clamp(max=self.heldout_ids.numel() - 1)
        if not torch.equal(self.heldout_ids[pos], ids):
            raise ReferenceCoverageError(
                "Expected the held-out examples the reference models were scored on, but the "
                "held-out loader yields other ids; build the rule with this held-out set."
            )
        law = OutGaussian(
            self.heldout_law.mean[pos], self.heldout_law.std[pos], self.heldout_law.n[pos]
        )
        return fit_heldout_map(heldout_values.double().cpu(), law)

    def scores(
        self, values: Tensor, sample_ids: Tensor, heldout_map: HeldoutMap = IDENTITY_MAP
    ) -> Tensor:
        """``[E]`` scores :math:`z_i` of a tested model's values, read through its map."""
        ids = sample_ids.long().cpu()
        law = OutGaussian(self.law.mean[ids], self.law.std[ids], self.law.n[ids])
        return out_zscores(
            values.double().cpu(), law, direction=self.direction, heldout_map=heldout_map
        )

    def judge(self, scores: Tensor) -> dict[str, Any]:
        """The rule's verdict on ``[E]`` scores: flagged count and mean against tolerances."""
        size = int(scores.numel())
        flagged = int((scores > self.threshold).sum())
        tol, mean_tol, mean = self.tolerance(size), self.mean_tolerance(size), float(scores.mean())
        return {
            "size": size,
            "flagged": flagged,
            "tolerance": tol,
            "mean_score": mean,
            "mean_tolerance": mean_tol,
            "satisfied": bool(flagged <= tol and mean <= mean_tol),
        }

    def verify(
        self, values: Tensor, sample_ids: Tensor, heldout_map: HeldoutMap = IDENTITY_MAP
    ) -> dict[str, Any]:
        """Per-example verification of a forget set against OUT (the report's numbers).

        Returns:
            :meth:`judge`'s ``{"size", "flagged", "tolerance", "mean_score",
            "mean_tolerance", "satisfied"}`` with ``"flagged_ids"``, ``"under_ids"``,
            ``"extrapolated_ids"`` and ``"map"``; ``under_ids`` are examples *less* confident
            than OUT by more than the threshold (over-unlearned), reported, not part of the
            rule; ``extrapolated_ids`` are examples whose OUT mean lies outside the held-out
            set's range, where the map is a line extended beyond its data (measured: on
            mislabelled examples it misjudges the oracles' level by up to 2 units of score);
            ``"power"`` is :meth:`power` on the set: how often the rule would see it as
            trained on if it still were (low power: "looks OUT" is weak evidence).
        """
        ids = self.check_ids(sample_ids)
        z = self.scores(values, ids, heldout_map)
        extrapolated: list[int] = []
        if self.heldout_law is not None and heldout_map != IDENTITY_MAP:
            lo, hi = self.heldout_law.mean.min(), self.heldout_law.mean.max()
            mu = self.law.mean[ids]
            extrapolated = ids[(mu < lo) | (mu > hi)].tolist()
        return {
            **self.judge(z),
            "flagged_ids": ids[z > self.threshold].tolist(),
            "under_ids": ids[z < -self.threshold].tolist(),
            "extrapolated_ids": extrapolated,
            "map": heldout_map.as_dict(),
            "power": self.power(ids),
        }


class CalibratedStopping(TrajectoryStopCallback):
    """Stop an unlearning run once the forget set is indistinguishable from never-trained-on.

    After every optimizer step (and before the first), the forget set is scored against each
    example's OUT law (:class:`OutRule`, read through the model's held-out map when the rule
    has a held-out law), and the step is *satisfied* when at most ``rule.tolerance(E)``
    examples score above the threshold and the mean score is at most
    ``rule.mean_tolerance(E)`` (:meth:`OutRule.judge`). The run stops at the first step that
    ends ``hold + 1`` consecutive satisfied steps (not before ``min_steps``), decided through
    ``trainer.strategy.reduce_boolean_decision``. Each check is appended to :attr:`trajectory`
    and logged as ``unlearn/out_flagged``, ``unlearn/out_tolerance``,
    ``unlearn/out_mean_score``, ``unlearn/out_mean_tolerance``, ``unlearn/out_map_slope`` and
    ``unlearn/out_map_scale``. One host synchronisation per step
    (the stop decision itself).

    Args:
        rule: the fitted :class:`OutRule`.
        hold: extra consecutive satisfied steps required (>= 0).
        min_steps: never stop before this step.
        forget_dataloader: the forget set (default ``trainer.datamodule.forget_dataloader()``).
        heldout_dataloader: the held-out set of the rule's map (default the data module's,
            when the rule has a held-out law).
        stop: ``False`` only observes (records and logs, never stops).
        keep_scores: keep the per-example scores of every step in :attr:`scores`.
        batch_adapter: how to read the forget and held-out batches (default: the
            ``batch_adapter`` of the :class:`~lightning_unlearn.UnlearningModule` being trained,
            else ``(x, y, ...)`` or Hugging Face dicts).

    Raises:
        ValueError: ``hold`` or ``min_steps`` out of range.
        ReferenceCoverageError: (at the first check) forget examples the rule cannot judge.

    Example:
        >>> import torch
        >>> from lightning_unlearn.evaluation.functional.out_score import OutGaussian
        >>> law = OutGaussian(torch.zeros(4), torch.ones(4), torch.full((4,), 4))
        >>> stop = CalibratedStopping(OutRule(law, torch.tensor([0.0, 0.0])), hold=2)
        >>> stop.rule.tolerance(4)
        0
    """

    _state_version = _STATE_VERSION

    def __init__(
        self,
        rule: OutRule,
        *,
        hold: int = 5,
        min_steps: int = 0,
        forget_dataloader: Iterable[Any] | None = None,
        heldout_dataloader: Iterable[Any] | None = None,
        stop: bool = True,
        keep_scores: bool = False,
        batch_adapter: AdapterLike | None = None,
    ) -> None:
        if not isinstance(hold, int) or hold < 0:
            raise ValueError(f"Expected `hold` to be an int >= 0, but got {hold!r}.")
        if not isinstance(min_steps, int) or min_steps < 0:
            raise ValueError(f"Expected `min_steps` to be an int >= 0, but got {min_steps!r}.")
        self.rule, self.hold, self.min_steps = rule, hold, min_steps
        self.stop, self.keep_scores = stop, keep_scores
        self.batch_adapter = batch_adapter
        self._forget_loader, self._heldout_loader = forget_dataloader, heldout_dataloader
        self.trajectory = []
        self.scores: list[Tensor] = []
        self.sample_ids: Tensor | None = None
        self.stopped_step = None
        self._run = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(threshold=self.rule.threshold, level=self.rule.level)

    def _loaders(self, trainer: pl.Trainer) -> tuple[Iterable[Any], Iterable[Any] | None]:
        dm = getattr(trainer, "datamodule", None)
        size = getattr(dm, "num_samples", None)
        if isinstance(size, int) and size != self.rule.num_samples:
            raise ReferenceCoverageError(
                f"Expected the data set of the reference models ({self.rule.num_samples} "
                f"examples; their membership masks index it), but the data module has {size}; "
                "train the reference models on the data set being unlearned."
            )
        forget, heldout = self._forget_loader, self._heldout_loader
        if forget is None and dm is not None and hasattr(dm, "forget_dataloader"):
            forget = dm.forget_dataloader()
        wants_heldout = self.rule.heldout_law is not None
        if wants_heldout and heldout is None and getattr(dm, "heldout_set", None) is not None:
            heldout = dm.heldout_dataloader()  # type: ignore[union-attr]
        if forget is None or (wants_heldout and heldout is None):
            raise ValueError(
                "Expected the forget loader (and, for a rule with a held-out law, the held-out "
                "loader) for `CalibratedStopping`, but got none; pass `forget_dataloader=` / "
                "`heldout_dataloader=`, or fit with a `ForgetRetainDataModule(..., heldout=...)`."
            )
        return forget, heldout

    def measure(self, model: nn.Module, trainer: pl.Trainer) -> tuple[Tensor, Tensor, HeldoutMap]:
        """``(scores [E], sample_ids [E], held-out map)`` of ``model`` now (overridable)."""
        forget, heldout = self._loaders(trainer)
        adapter = self.batch_adapter or getattr(trainer.lightning_module, "batch_adapter", None)
        phi, loss, ids = score_model(model, forget, batch_adapter=adapter)
        values = phi if self.rule.metric == "phi" else loss
        ids = self.rule.check_ids(ids)
        hmap = IDENTITY_MAP
        if heldout is not None:
            h_phi, h_loss, h_ids = score_model(model, heldout, batch_adapter=adapter)
            hmap = self.rule.heldout_map(
                h_phi if self.rule.metric == "phi" else h_loss, h_ids.cpu()
            )
        return self.rule.scores(values, ids, hmap), ids, hmap

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Score the forget set now, record, log and (when the hold is complete) stop."""
        inner = getattr(pl_module, "module", None)
        model: nn.Module = inner if isinstance(inner, nn.Module) else pl_module
        z, ids, hmap = self.measure(model, trainer)
        self.sample_ids = ids
        verdict = self.rule.judge(z)
        self._run = self._run + 1 if verdict["satisfied"] else 0
        step = int(trainer.global_step)
        record: dict[str, Any] = {"step": step, **verdict, "map": hmap.as_dict()}
        self.trajectory.append(record)
        if self.keep_scores:
            self.scores.append(z)
        metrics = {
            "unlearn/out_flagged": float(verdict["flagged"]),
            "unlearn/out_tolerance": float(verdict["tolerance"]),
            "unlearn/out_mean_score": verdict["mean_score"],
            "unlearn/out_mean_tolerance": verdict["mean_tolerance"],
            "unlearn/out_map_slope": hmap.slope,
            "unlearn/out_map_scale": hmap.scale,
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        decision = self.stop and self._run > self.hold and step >= self.min_steps
        if trainer.strategy.reduce_boolean_decision(decision, all=True):
            trainer.should_stop = True
            self.stopped_step = step
        return record

    @property
    def arrival_step(self) -> int | None:
        """The first step of the satisfied window that stopped the run (``None``: no stop)."""
        return None if self.stopped_step is None else self.stopped_step - self.hold

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._resumed_stopped(trainer):
            return
        if not self.trajectory or self.trajectory[-1]["step"] != trainer.global_step:
            self.check(trainer, pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.trajectory and self.trajectory[-1]["step"] == trainer.global_step:
            return  # no optimizer step since the last check (gradient accumulation)
        self.check(trainer, pl_module)

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {"run": self._run}

    @override
    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        self._run = int(state_dict["run"])
