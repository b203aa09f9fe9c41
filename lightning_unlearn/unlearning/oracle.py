"""The oracle of unlearning: the same model retrained from scratch on the retain set."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import lightning.pytorch as pl
from torch import nn

from lightning_unlearn.data.splits import ForgetRetainDataModule

__all__ = ["fresh_copy", "train_oracle"]

M = TypeVar("M", bound=pl.LightningModule)


def fresh_copy(module: M, seed: int = 0) -> M:
    """A re-initialised copy of ``module``: same class and structure, new random weights.

    Every submodule with a ``reset_parameters`` method is reset after seeding all RNGs with
    ``seed`` (``lightning.pytorch.seed_everything``), so two calls with the same seed agree.

    Args:
        module: the trained module (left untouched).
        seed: seed of the new initialisation.

    Returns:
        The copy, detached from any trainer and in training mode, as a newly built module is
        (a module evaluated last is in eval mode; its oracle must train with dropout and
        BatchNorm in their training behaviour, the recipe's).

    Example:
        >>> import torch, lightning.pytorch as pl
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(3, 2)
        >>> net = Net()
        >>> a, b = fresh_copy(net, seed=1), fresh_copy(net, seed=1)
        >>> type(a) is Net, torch.equal(a.fc.weight, b.fc.weight)
        (True, True)
    """
    trainers = {m: m._trainer for m in module.modules() if isinstance(m, pl.LightningModule)}
    try:
        for m in trainers:
            m._trainer = None  # a Trainer must not be deep-copied with the weights
        clone = copy.deepcopy(module)
    finally:
        for m, trainer in trainers.items():
            m._trainer = trainer
    pl.seed_everything(seed, verbose=False)
    for sub in clone.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset) and isinstance(sub, nn.Module):
            reset()
    return clone.train()


def train_oracle(
    module: M,
    datamodule: ForgetRetainDataModule,
    *,
    seed: int = 0,
    **trainer_kwargs: Any,
) -> M:
    """Retrain a fresh copy of ``module`` on the retain set only: the oracle of THEORY §6.

    "Same recipe" means the module's own ``training_step`` and ``configure_optimizers``, and
    the trainer settings you trained the original with (pass them as ``trainer_kwargs``, e.g.
    ``max_epochs=20``). The retain loader is shuffled reproducibly; its batches are the
    data set's own (with ids only if the data set carries them) and its sampler draws the
    original ids.

    Args:
        module: the trained module (not modified).
        datamodule: the forget/retain split.
        seed: seed of the new initialisation and of the run.
        **trainer_kwargs: arguments of ``lightning.pytorch.Trainer`` (defaults: CPU-friendly
            quiet settings: no logger, no checkpoints, no progress bar, no model summary).

    Returns:
        The retrained copy (the same class as ``module``).
    """
    oracle = fresh_copy(module, seed=seed)
    settings: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    settings.update(trainer_kwargs)
    trainer = pl.Trainer(**settings)
    trainer.fit(oracle, train_dataloaders=datamodule.retain_dataloader(shuffle=True))
    return oracle
