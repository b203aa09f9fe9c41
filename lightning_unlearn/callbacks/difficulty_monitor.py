"""``DifficultyMonitor``: per-example correctness, confidence and EL2N every epoch (THEORY §6).

At the end of every ``every_n_epochs``-th training epoch the monitor runs the module, in eval
mode and without gradients, over the training data (or a loader you give) and records for every
sample id its correctness, true-class confidence and EL2N score. From these tables come the
difficulty scores compared with the per-instance privacy loss: forgetting events (Toneva et al.
2019), mean true-class confidence (a C-score proxy, Jiang et al. 2021) and EL2N early in
training (Paul et al. 2021).

Under DDP every rank evaluates its shard and the dense ``[4, N]`` table of sums is reduced by
sum with ``trainer.strategy.reduce``, so the result equals a single-process run.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_unlearn.errors import LedgerMismatchError
from lightning_unlearn.evaluation.functional import eval_mode
from lightning_unlearn.evaluation.functional.adapters import (
    AdapterLike,
    as_adapter,
    batches_with_ids,
)
from lightning_unlearn.evaluation.functional.difficulty import (
    _difficulty_compute,
    _difficulty_update,
    forgetting_events,
    mean_true_class_confidence,
)
from lightning_unlearn.integrity import atomic_write

__all__ = ["DIFFICULTY_STATE_VERSION", "DifficultyMonitor"]

DIFFICULTY_STATE_VERSION = 1
_HISTORY = ("correct", "confidence", "el2n")


class DifficultyMonitor(Callback):
    """Record per-example correctness, true-class confidence and EL2N each epoch by sample id.

    Tables (CPU, float32, ``[epochs recorded, N]``, NaN where an example was not evaluated) are
    in :attr:`history`; :meth:`scores` turns them into per-example difficulty scores. The
    extra pass costs one forward pass over the data per recorded epoch and ignores
    ``limit_train_batches``.

    Args:
        num_samples: size of the training set (ids in ``[0, num_samples)``); default: the
            length of the evaluated loader's dataset at the first record.
        every_n_epochs: record after every n-th training epoch (>= 1).
        dataloader: loader to evaluate; default ``trainer.train_dataloader`` (sharded by
            Lightning under DDP). Ids are those its batches carry, else the indices its sampler
            draws (positions in its dataset).
        batch_adapter: how to read a batch and run the module on it (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`; default ``(x, y, ...)``
            classification or Hugging Face-style dicts); it must give class logits.
        save_dir: if given, rank 0 writes ``difficulty_state.pt`` (this monitor's state) and
            ``difficulty_scores.csv`` there when fitting ends.
        state_key: key of the state in checkpoints (set it when two monitors coexist).

    Raises:
        ValueError: invalid arguments.

    Example:
        >>> monitor = DifficultyMonitor(every_n_epochs=2)
        >>> monitor.state_key
        'DifficultyMonitor'
    """

    def __init__(
        self,
        num_samples: int | None = None,
        every_n_epochs: int = 1,
        *,
        dataloader: Iterable[Any] | None = None,
        batch_adapter: AdapterLike | None = None,
        save_dir: str | Path | None = None,
        state_key: str | None = None,
    ) -> None:
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(
                f"Expected `num_samples` to be a positive int, but got {num_samples!r}."
            )
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"Expected `every_n_epochs` >= 1, but got {every_n_epochs!r}.")
        self.num_samples = num_samples
        self._user_num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.dataloader = dataloader
        self.batch_adapter = as_adapter(batch_adapter)
        self.save_dir = None if save_dir is None else Path(save_dir)
        self._state_key = state_key or type(self).__name__
        self.epochs: list[int] = []
        self.history: dict[str, Tensor] = {}
        self._loaded_state: dict[str, Any] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    # ------------------------------------------------------------------ recording
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning restores callback state after `setup`, so loaded state is applied here.
        if self._loaded_state is not None:
            self._apply_state(self._loaded_state)
            self._loaded_state = None

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Record after the epoch's last batch: this runs before end-of-epoch validation, so a
        # checkpoint saved on validation end already holds this epoch's row.
        if batch_idx + 1 == trainer.num_training_batches:
            self._record(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module)  # no-op when already recorded after the last batch

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs != 0 or epoch in self.epochs:
            return
        loader = self.dataloader if self.dataloader is not None else trainer.train_dataloader
        if loader is None or isinstance(loader, list | tuple | dict):
            raise ValueError(
                "Expected a single training DataLoader to evaluate, but got "
                f"{type(loader).__name__}; pass `dataloader=` to DifficultyMonitor."
            )
        num_samples = self._resolve_num_samples(loader)
        table = torch.zeros(4, num_samples, dtype=torch.float64, device=pl_module.device)
        with torch.no_grad(), eval_mode(pl_module):
            for batch, ids in batches_with_ids(loader):
                out = self.batch_adapter(pl_module, batch)
                if out.logits is None or out.targets is None:
                    raise ValueError(
                        "Expected class logits and targets from the `batch_adapter` for the "
                        "difficulty scores, but it gave none."
                    )
                assert ids is not None
                table += _difficulty_update(out.logits, out.targets, ids, num_samples)
        table = trainer.strategy.reduce(table, reduce_op="sum")
        self._append(epoch, _difficulty_compute(table.cpu()))

    def _resolve_num_samples(self, loader: Iterable[Any]) -> int:
        num_samples = self._user_num_samples
        if num_samples is None:
            dataset = getattr(loader, "dataset", None)
            if dataset is None or not hasattr(dataset, "__len__"):
                raise ValueError(
                    "Expected `num_samples` for a loader without a sized `dataset`; pass "
                    "`DifficultyMonitor(num_samples=len(train_set))`."
                )
            num_samples = len(dataset)
        recorded = self.history["correct"].shape[1] if self.history else num_samples
        if recorded != num_samples:
            raise LedgerMismatchError(
                f"The recorded (or resumed) tables have {recorded} examples, but this run has "
                f"{num_samples}: they belong to another data set. Resume with the same data, "
                "or use a fresh monitor (another `state_key`)."
            )
        self.num_samples = num_samples
        return num_samples

    def _append(self, epoch: int, means: dict[str, Tensor]) -> None:
        self.epochs.append(epoch)
        for name in _HISTORY:
            row = means[name].float()[None]
            old = self.history.get(name)
            self.history[name] = row if old is None else torch.cat([old, row])

    # ------------------------------------------------------------------ scores
    def scores(self, el2n_epoch: int | None = None) -> dict[str, Tensor]:
        """Per-example difficulty scores from the recorded tables (``[N]`` each, CPU).

        * ``forgetting_events``: correct -> wrong transitions between consecutive records
          (an example not evaluated in a record keeps its previous state);
        * ``never_learned``: 1.0 where the example was never classified correctly;
        * ``mean_confidence``: mean true-class confidence over records;
        * ``el2n``: EL2N at the record of training epoch ``el2n_epoch`` (default: the first
          record, "early in training").

        Args:
            el2n_epoch: the training epoch (0-based) whose EL2N to return.

        Raises:
            ValueError: nothing recorded yet, or ``el2n_epoch`` was not recorded.
        """
        if not self.epochs:
            raise ValueError("Expected at least one recorded epoch, but none was recorded yet.")
        correct = self.history["correct"]
        filled = correct.clone()
        for t in range(1, len(filled)):  # carry the last known state over unevaluated records
            filled[t] = torch.where(filled[t].isnan(), filled[t - 1], filled[t])
        known = ~filled.isnan()
        flags = filled.nan_to_num(0.0) > 0.5
        events = forgetting_events(flags & known)  # "unknown" counts as not correct
        if el2n_epoch is None:
            index = 0
        elif el2n_epoch in self.epochs:
            index = self.epochs.index(el2n_epoch)
        else:
            raise ValueError(f"Expected `el2n_epoch` in {self.epochs}, but got {el2n_epoch}.")
        return {
            "forgetting_events": events.double(),
            "never_learned": (~flags.any(dim=0)).double(),
            "mean_confidence": mean_true_class_confidence(self.history["confidence"]).double(),
            "el2n": self.history["el2n"][index].double(),
        }

    # ------------------------------------------------------------------ output
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_dir is None or not trainer.is_global_zero or not self.epochs:
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.save_dir / "difficulty_state.pt") as fh:
            torch.save(self.state_dict(), fh)
        scores = self.scores()
        with atomic_write(self.save_dir / "difficulty_scores.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sample_id", *scores])
            columns = [s.tolist() for s in scores.values()]
            for sample_id, row in enumerate(zip(*columns, strict=True)):
                writer.writerow([sample_id, *row])

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": DIFFICULTY_STATE_VERSION,
            "num_samples": self.num_samples,
            "every_n_epochs": self.every_n_epochs,
            "epochs": list(self.epochs),
            "history": {k: v.cpu().clone() for k, v in self.history.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        expected = {"version", "num_samples", "every_n_epochs", "epochs", "history"}
        if not isinstance(state_dict, dict) or set(state_dict) != expected:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict)
            raise LedgerMismatchError(
                f"Expected a DifficultyMonitor state with keys {sorted(expected)}, but got {got}; "
                "the checkpoint was written by another callback under this `state_key`."
            )
        if state_dict["version"] != DIFFICULTY_STATE_VERSION:
            raise LedgerMismatchError(
                f"Expected a DifficultyMonitor state of version {DIFFICULTY_STATE_VERSION}, but "
                f"got {state_dict['version']!r}. Resume with the lightning_unlearn version that "
                "wrote the checkpoint, or use another `state_key` to start fresh."
            )
        saved_n, mine = state_dict["num_samples"], self._user_num_samples
        if mine is not None and saved_n is not None and saved_n != mine:
            raise LedgerMismatchError(
                f"The saved DifficultyMonitor state has num_samples={saved_n}, but this monitor "
                f"has num_samples={mine}: it belongs to another data set. Resume with the same "
                "data, or use a fresh monitor (another `state_key`)."
            )
        self._loaded_state = state_dict

    def _apply_state(self, state: dict[str, Any]) -> None:
        # The size is checked against the data at the next record (`_resolve_num_samples`).
        self.epochs = [int(e) for e in state["epochs"]]
        self.history = {k: v.float().clone() for k, v in state["history"].items()}
