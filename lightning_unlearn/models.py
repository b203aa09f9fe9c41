"""Small classifiers used by the command line, the demo, the tests and the examples.

Every model is a plain :class:`~lightning.pytorch.LightningModule` whose batches are
``(x, y, sample_id)`` (as produced by :class:`~lightning_unlearn.data.IndexedDataset`), whose
``training_step`` returns the mean cross-entropy over the batch, and whose optimizer is plain SGD
by default: the setting in which THEORY §1 reads the per-example gradients.

The CNN uses GroupNorm rather than BatchNorm: per-example gradients are only meaningful when one
example's output does not depend on the other examples of its batch (see the PLATFORM notes on
Opacus), and GroupNorm normalises within each example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

__all__ = ["ClassifierModule", "GroupNormCNN", "MLPClassifier", "build_model", "model_name"]


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Expected `{name}` to be {bound}, but got {value!r}.")


class ClassifierModule(pl.LightningModule):
    """Shared training logic: cross-entropy on ``(x, y, sample_id)`` batches and SGD.

    Subclasses build ``self.net`` (an ``nn.Module`` mapping inputs to logits).

    Args:
        lr: SGD learning rate.
        momentum: SGD momentum (0: plain SGD, the THEORY §1 update).
        weight_decay: SGD weight decay.
    """

    net: nn.Module

    def __init__(self, lr: float = 0.05, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__()
        _check_positive("lr", lr, allow_zero=True)
        _check_positive("momentum", momentum, allow_zero=True)
        _check_positive("weight_decay", weight_decay, allow_zero=True)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss_acc(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=-1) == y).float().mean()
        return loss, acc

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, acc = self._loss_acc(batch)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log("train_acc", acc, on_step=False, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, acc = self._loss_acc(batch)
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_acc", acc, prog_bar=True)
        return loss

    @override
    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, acc = self._loss_acc(batch)
        self.log("test_loss", loss)
        self.log("test_acc", acc)
        return loss

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )


class GroupNormCNN(ClassifierModule):
    """Two conv blocks (conv 3x3 -> GroupNorm -> ReLU -> max-pool 2) and a linear head.

    Works for square inputs of side >= 4 (8x8 digits, 28x28 Fashion-MNIST).

    Args:
        in_channels: input channels.
        num_classes: number of classes.
        input_size: side of the square input image.
        channels: output channels of the two conv blocks.
        num_groups: GroupNorm groups (must divide both channel counts).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.

    Example:
        >>> import torch
        >>> model = GroupNormCNN(input_size=8)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        channels: Sequence[int] = (16, 32),
        num_groups: int = 4,
        lr: float = 0.05,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr=lr, momentum=momentum, weight_decay=weight_decay)
        channels = tuple(int(c) for c in channels)
        if len(channels) != 2 or min(channels) < 1:
            raise ValueError(f"Expected `channels` to be two positive ints, but got {channels}.")
        if any(c % num_groups for c in channels):
            raise ValueError(
                f"Expected `num_groups` to divide every entry of `channels`={channels}, "
                f"but got num_groups={num_groups}."
            )
        if input_size < 4:
            raise ValueError(f"Expected `input_size` >= 4, but got {input_size}.")
        self.save_hyperparameters(
            {
                "in_channels": in_channels,
                "num_classes": num_classes,
                "input_size": input_size,
                "channels": list(channels),
                "num_groups": num_groups,
                "lr": lr,
                "momentum": momentum,
                "weight_decay": weight_decay,
            }
        )
        c1, c2 = channels
        side = input_size // 2 // 2
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),
            nn.GroupNorm(num_groups, c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.GroupNorm(num_groups, c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * side * side, num_classes),
        )


class MLPClassifier(ClassifierModule):
    """A multi-layer perceptron on flattened inputs.

    Args:
        input_dim: number of input features (inputs are flattened first).
        num_classes: number of classes.
        hidden: widths of the hidden layers.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.

    Example:
        >>> import torch
        >>> MLPClassifier(input_dim=64, hidden=(32,))(torch.zeros(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        input_dim: int = 784,
        num_classes: int = 10,
        hidden: Sequence[int] = (256, 256),
        lr: float = 0.05,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr=lr, momentum=momentum, weight_decay=weight_decay)
        hidden = tuple(int(h) for h in hidden)
        if input_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"Expected positive `input_dim` and `hidden`, but got {input_dim}, {hidden}."
            )
        self.save_hyperparameters(
            {
                "input_dim": input_dim,
                "num_classes": num_classes,
                "hidden": list(hidden),
                "lr": lr,
                "momentum": momentum,
                "weight_decay": weight_decay,
            }
        )
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)


_MODELS: dict[str, type[ClassifierModule]] = {"cnn": GroupNormCNN, "mlp": MLPClassifier}


def build_model(name: str, **hparams: Any) -> ClassifierModule:
    """Build a model by name (``"cnn"`` or ``"mlp"``) from keyword hyper-parameters.

    The command line uses this to rebuild a model from the ``hyper_parameters`` stored in a
    checkpoint, so checkpoints load with ``torch.load(..., weights_only=True)``.

    Args:
        name: ``"cnn"`` (:class:`GroupNormCNN`) or ``"mlp"`` (:class:`MLPClassifier`).
        **hparams: constructor arguments of that class.

    Returns:
        The model.

    Raises:
        ValueError: unknown name.

    Example:
        >>> type(build_model("mlp", input_dim=64, hidden=(16,))).__name__
        'MLPClassifier'
    """
    if name not in _MODELS:
        raise ValueError(f"Expected `name` to be one of {sorted(_MODELS)}, but got {name!r}.")
    return _MODELS[name](**hparams)


def model_name(model: nn.Module) -> str:
    """The :func:`build_model` name of a model instance (inverse of :func:`build_model`)."""
    for name, cls in _MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(
        f"Expected a GroupNormCNN or MLPClassifier, but got {type(model).__name__}; "
        "the command line only saves and loads its own models."
    )
