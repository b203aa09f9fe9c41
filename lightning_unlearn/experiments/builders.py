"""The bundled data sets and models of the experiments, by name, with typed arguments."""

from __future__ import annotations

from typing import Any, Literal, get_args

from lightning_unlearn.data.modules import (
    DigitsDataModule,
    FashionMNISTDataModule,
    TensorSplitDataModule,
)
from lightning_unlearn.errors import InvalidArgumentError
from lightning_unlearn.models import ClassifierModule, GroupNormCNN, MLPClassifier

__all__ = [
    "DATASETS",
    "Architecture",
    "DatasetName",
    "build_datamodule",
    "datamodule_from_description",
    "describe_datamodule",
    "make_model",
]

DatasetName = Literal["digits", "fashion-mnist"]
Architecture = Literal["cnn", "mlp"]

DATASETS: dict[str, type[TensorSplitDataModule]] = {
    "digits": DigitsDataModule,
    "fashion-mnist": FashionMNISTDataModule,
}
"""Data set name -> bundled data module."""


def build_datamodule(
    name: DatasetName,
    *,
    batch_size: int,
    seed: int,
    data_dir: str | None = None,
    subset: int | None = None,
    test_subset: int | None = None,
) -> TensorSplitDataModule:
    """Build a bundled data module by name (not yet set up).

    Args:
        name: ``"digits"`` (scikit-learn's, bundled) or ``"fashion-mnist"`` (IDX files).
        batch_size: the training batch size.
        seed: seed of the split and of the shuffling.
        data_dir: Fashion-MNIST's IDX directory (default: where Debian installs it).
        subset: Fashion-MNIST: training-pool examples to keep (default all).
        test_subset: Fashion-MNIST: test examples to keep (default all).

    Returns:
        The data module.

    Raises:
        InvalidArgumentError: an unknown name, or a Fashion-MNIST option given for digits.

    Example:
        >>> build_datamodule("digits", batch_size=32, seed=0).batch_size
        32
    """
    if name not in DATASETS:
        raise InvalidArgumentError(
            f"Expected `dataset` to be one of {sorted(DATASETS)}, but got {name!r}."
        )
    kwargs: dict[str, Any] = {"batch_size": batch_size, "seed": seed}
    extra = {"data_dir": data_dir, "subset": subset, "test_subset": test_subset}
    if name == "fashion-mnist":
        kwargs.update({k: v for k, v in extra.items() if v is not None})
    return DATASETS[name](**kwargs)


def describe_datamodule(dm: TensorSplitDataModule) -> dict[str, Any]:
    """``{"name": ..., "hparams": {...}}`` from which the data module is rebuilt
    (``DATASETS[name](**hparams)``); stored in the checkpoints.

    Raises:
        InvalidArgumentError: ``dm`` is not one of :data:`DATASETS`.
    """
    for name, cls in DATASETS.items():
        if type(dm) is cls:
            return {"name": name, "hparams": dict(dm.hparams)}
    raise InvalidArgumentError(f"Expected a bundled data module, but got {type(dm).__name__}.")


def datamodule_from_description(description: dict[str, Any]) -> TensorSplitDataModule:
    """Rebuild the data module :func:`describe_datamodule` described (not yet set up).

    Raises:
        InvalidArgumentError: the description names no bundled data set.

    Example:
        >>> dm = build_datamodule("digits", batch_size=32, seed=3)
        >>> datamodule_from_description(describe_datamodule(dm)).hparams == dm.hparams
        True
    """
    name = description.get("name")
    if name not in DATASETS:
        raise InvalidArgumentError(
            f"Expected a data-module description naming one of {sorted(DATASETS)}, but got "
            f"{name!r}."
        )
    return DATASETS[name](**description.get("hparams", {}))


def make_model(arch: Architecture, dm: TensorSplitDataModule, **hparams: Any) -> ClassifierModule:
    """A ``"cnn"`` (:class:`~lightning_unlearn.models.GroupNormCNN`) or ``"mlp"`` sized for the
    (set-up) data module's inputs.

    Raises:
        InvalidArgumentError: an unknown architecture.
    """
    if arch not in get_args(Architecture):
        raise InvalidArgumentError(f"Expected `model` to be 'cnn' or 'mlp', but got {arch!r}.")
    channels, height, width = dm.input_shape
    if arch == "cnn":
        return GroupNormCNN(
            in_channels=channels, num_classes=dm.num_classes, input_size=height, **hparams
        )
    return MLPClassifier(input_dim=channels * height * width, num_classes=dm.num_classes, **hparams)
