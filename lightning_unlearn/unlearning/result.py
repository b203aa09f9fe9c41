"""The record of an unlearning run: what was done, how long, why it stopped, before and after."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from torch import nn

from lightning_unlearn.evaluation.functional import loss_mia_auroc, per_example_losses
from lightning_unlearn.evaluation.functional.adapters import AdapterLike
from lightning_unlearn.integrity import atomic_write

__all__ = ["SPLITS", "UnlearningResult", "evaluate_splits"]

SPLITS = ("forget", "retain", "heldout")
"""The splits :func:`evaluate_splits` reports, each as ``{"loss", "accuracy"}``."""

STOP_REASONS = ("calibrated", "budget", "other")
"""Why a run stopped: the loss-calibrated rule fired, the step budget was spent, or something
else (``max_epochs``, ``max_time``, another callback). A run that raises produces no result."""


@dataclasses.dataclass
class UnlearningResult:
    """Summary of one unlearning run (JSON round-trip with :meth:`to_json` / :meth:`from_json`).

    Attributes:
        method: the unlearning method (see :class:`~lightning_unlearn.UnlearningModule`).
        steps: optimizer steps taken (``trainer.global_step`` at the end).
        budget: the step limit (``Trainer.max_steps``), or ``None`` if unlimited.
        stop_reason: one of ``"calibrated"``, ``"budget"``, ``"other"`` (``STOP_REASONS``).
        num_forget: size of the forget set.
        before: :func:`evaluate_splits` before unlearning: per split (``"forget"``,
            ``"retain"``, ``"heldout"``) ``{"loss", "accuracy"}``, plus ``"forget_mia_auroc"``
            when a held-out set exists.
        after: the same after unlearning.
        trajectory: the loss-calibrated stopping checks, one dict per check (``step``,
            ``forget_loss``, ``heldout_loss``, ``loss_gap``, ``mia_auroc``, ``satisfied``).
        extra: free-form JSON-able details (e.g. the budget's privacy loss and aggregate).
        audit: the audit record of the deletion request
            (:func:`~lightning_unlearn.unlearning.audit.audit_record`; empty when none was made).

    Example:
        >>> r = UnlearningResult(method="finetune", steps=3, budget=10, stop_reason="calibrated")
        >>> UnlearningResult.from_json(r.to_json()) == r
        True
    """

    method: str
    steps: int
    budget: int | None
    stop_reason: str
    num_forget: int = 0
    before: dict[str, Any] = dataclasses.field(default_factory=dict)
    after: dict[str, Any] = dataclasses.field(default_factory=dict)
    trajectory: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    audit: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` (atomically) when given.

        Args:
            path: optional file to write.

        Returns:
            The JSON text.
        """
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
        if path is not None:
            with atomic_write(path, "w") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> UnlearningResult:
        """Read a result from JSON text or from a file path.

        Args:
            source: JSON text, or the path of a file written by :meth:`to_json`.

        Returns:
            The result.

        Raises:
            ValueError: the JSON lacks fields of an ``UnlearningResult``.
        """
        text = str(source)
        if not text.lstrip().startswith("{"):
            text = Path(source).read_text()
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"method", "steps", "budget", "stop_reason"} - set(data)
        if missing:
            raise ValueError(
                f"Expected an UnlearningResult JSON object, but it lacks {sorted(missing)}."
            )
        return cls(**{k: v for k, v in data.items() if k in names})


def evaluate_splits(
    model: nn.Module, datamodule: Any, *, batch_adapter: AdapterLike | None = None
) -> dict[str, Any]:
    """Mean per-example loss and accuracy of ``model`` on the forget, retain and held-out sets.

    The package's one evaluator of a model on a forget / retain / held-out split: the
    :class:`UnlearningResult` ``before`` / ``after`` entries, the demo, the paper's experiment
    and ``lightning-unlearn evaluate`` all report it, with one key schema (:data:`SPLITS`)::

        {
            "forget":  {"loss": float | None, "accuracy": float},
            "retain":  {"loss": float | None, "accuracy": float},
            "heldout": {"loss": float | None, "accuracy": float},  # with a held-out set
            "forget_mia_auroc": float | None,                        # with a held-out set
        }

    ``loss`` is the mean per-example loss (float64 mean; ``None`` when it is not finite, e.g.
    a diverged NegGrad run), ``accuracy`` the fraction of correct predictions, and
    ``forget_mia_auroc`` the loss-threshold membership attack's AUROC between the forget and
    the held-out losses (THEORY §6; ``None`` when the losses are not finite).

    Args:
        model: the model (the user's module).
        datamodule: a :class:`~lightning_unlearn.ForgetRetainDataModule`.
        batch_adapter: how to read a batch (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`; default ``(x, y, ...)``
            classification or Hugging Face-style dicts: cross-entropy per example, or a causal
            LM's mean token loss).

    Returns:
        The metrics in the schema above.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from lightning_unlearn import ForgetRetainDataModule
        >>> x, y = torch.randn(12, 3), torch.arange(12) % 2
        >>> dm = ForgetRetainDataModule(
        ...     TensorDataset(x, y), [0, 1, 2], heldout=TensorDataset(x, y), batch_size=4
        ... )
        >>> metrics = evaluate_splits(torch.nn.Linear(3, 2), dm)
        >>> sorted(metrics), sorted(metrics["forget"])
        (['forget', 'forget_mia_auroc', 'heldout', 'retain'], ['accuracy', 'loss'])
    """
    loaders = {"forget": datamodule.forget_dataloader(), "retain": datamodule.retain_dataloader()}
    if datamodule.heldout_set is not None:
        loaders["heldout"] = datamodule.heldout_dataloader()
    out: dict[str, Any] = {}
    losses = {}
    for name, loader in loaders.items():
        loss, _, correct = per_example_losses(model, loader, batch_adapter=batch_adapter)
        losses[name] = loss
        out[name] = {
            "loss": _finite_or_none(loss.double().mean().item()),
            "accuracy": correct.double().mean().item(),
        }
    if "heldout" in losses:
        try:
            out["forget_mia_auroc"] = loss_mia_auroc(losses["forget"], losses["heldout"]).item()
        except ValueError:  # non-finite losses (a diverged NegGrad run): no attack score
            out["forget_mia_auroc"] = None
    return out


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
