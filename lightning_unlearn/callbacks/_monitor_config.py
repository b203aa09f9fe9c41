"""Configuration of :class:`~lightning_unlearn.callbacks.PerInstancePrivacyMonitor`.

:class:`MonitorConfig` holds the monitor's options, validated once (STYLE §7: "Expected `x` to
be ..., but got ..."); the checks applied when a saved monitor state is resumed follow (STYLE §5:
a named error that says how to recover).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from lightning_unlearn.accounting import DEFAULT_ALPHAS, Convention, NoiseConfig, validate_alphas
from lightning_unlearn.callbacks._loss_weights import LossWeights
from lightning_unlearn.errors import LedgerMismatchError
from lightning_unlearn.grad_norms import GradSampleMode, LossReduction

__all__ = [
    "MONITOR_STATE_VERSION",
    "Estimator",
    "MonitorConfig",
    "check_arguments",
    "check_resume",
    "check_state_version",
]

MONITOR_STATE_VERSION = 1
"""Version of the monitor's checkpoint state; bumped whenever its layout changes."""

Estimator = Literal["online", "sweep"]

# Run configuration that must match when a saved monitor state is resumed.
_RESUME_KEYS = (
    "dataset_fingerprint",
    "noise_multiplier",
    "max_grad_norm",
    "estimator",
    "sample_rate",
    "loss_reduction",
)


def _one_of(name: str, value: object, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Expected `{name}` to be one of {allowed}, but got {value!r}.")


def check_arguments(
    *,
    sample_rate: float | None,
    estimator: str,
    sweep_every: int,
    grad_sample_mode: str,
    loss_reduction: object,
    delta: float,
    num_samples: int | None,
    flush_every: int,
) -> None:
    """Validate the monitor's scalar arguments.

    Raises:
        ValueError: naming the first invalid argument and the allowed values.
    """
    if sample_rate is not None and not 0.0 < float(sample_rate) <= 1.0:
        raise ValueError(f"Expected `sample_rate` in (0, 1], but got {sample_rate!r}.")
    _one_of("estimator", estimator, get_args(Estimator))
    if isinstance(sweep_every, bool) or not isinstance(sweep_every, int) or sweep_every < 1:
        raise ValueError(f"Expected `sweep_every` to be an integer >= 1, but got {sweep_every!r}.")
    _one_of("grad_sample_mode", grad_sample_mode, get_args(GradSampleMode))
    if not callable(loss_reduction):  # a callable gives per-example loss weights
        _one_of("loss_reduction", loss_reduction, get_args(LossReduction))
    if not 0.0 < float(delta) < 1.0:
        raise ValueError(f"Expected `delta` in (0, 1), but got {delta!r}.")
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise ValueError(f"Expected `num_samples` to be an integer >= 1, but got {num_samples!r}.")
    if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
        raise ValueError(
            f"Expected `flush_every` to be an integer >= 1 (1 adds every step to the ledger at "
            f"once), but got {flush_every!r}."
        )


@dataclass(frozen=True, eq=False)
class MonitorConfig:
    """The options of :class:`~lightning_unlearn.callbacks.PerInstancePrivacyMonitor`, checked.

    The fields are the monitor's keyword arguments (documented there), normalised: floats for
    numbers, a sorted tuple of ``alphas``, the unique sorted ``track_ids`` as a long tensor, a
    ``Path`` for ``save_dir`` and a tuple for ``exclude``. Build one to share a configuration
    between runs in Python, and pass it to
    :meth:`~lightning_unlearn.callbacks.PerInstancePrivacyMonitor.from_config`; the flat
    keyword arguments of the monitor (what ``trainer.callbacks`` ``init_args`` in a
    LightningCLI YAML name) build the same object.

    Raises:
        ValueError: an invalid option; the message names it.

    Example:
        >>> config = MonitorConfig(noise_multiplier=2.0, alphas=(8, 2), flush_every=8)
        >>> config.alphas, config.noise.noise_multiplier
        ((2, 8), 2.0)
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float | None = None
    alphas: Sequence[int] = DEFAULT_ALPHAS
    convention: Convention = "nominal"
    sample_rate: float | None = None
    estimator: Estimator = "online"
    sweep_every: int = 100
    track_ids: Sequence[int] | Tensor | None = None
    grad_sample_mode: GradSampleMode = "fused"
    delta: float = 1e-5
    save_dir: str | os.PathLike[str] | None = None
    sample_id_fn: Callable[[Any], Tensor] | None = None
    state_key: str | None = None
    loss_reduction: LossWeights = "mean"
    num_samples: int | None = None
    exclude_unsupported: bool = False
    exclude: Sequence[str] = ()
    log_histograms: bool = True
    flush_every: int = 32
    self_check: bool = True
    self_check_samples: int = 4
    noise: NoiseConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise once, here
        put(
            self,
            "noise",
            NoiseConfig(self.convention, float(self.noise_multiplier), self.max_grad_norm),
        )
        put(self, "noise_multiplier", self.noise.noise_multiplier)
        put(self, "alphas", validate_alphas(self.alphas))
        check_arguments(
            sample_rate=self.sample_rate,
            estimator=self.estimator,
            sweep_every=self.sweep_every,
            grad_sample_mode=self.grad_sample_mode,
            loss_reduction=self.loss_reduction,
            delta=self.delta,
            num_samples=self.num_samples,
            flush_every=self.flush_every,
        )
        samples = self.self_check_samples
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(
                f"Expected `self_check_samples` to be an integer >= 1, but got {samples!r}."
            )
        if self.sample_rate is not None:
            put(self, "sample_rate", float(self.sample_rate))
        if self.track_ids is not None:
            put(self, "track_ids", torch.as_tensor(self.track_ids).long().unique())
        put(self, "delta", float(self.delta))
        if self.save_dir is not None:
            put(self, "save_dir", Path(self.save_dir))
        exclude = self.exclude
        if isinstance(exclude, str) or not all(isinstance(n, str) for n in exclude):
            raise ValueError(
                f"Expected `exclude` to be a sequence of qualified parameter names, but got "
                f"{exclude!r}."
            )
        put(self, "exclude", tuple(exclude))
        put(self, "self_check", bool(self.self_check))

    def options(self) -> dict[str, Any]:
        """The options as the monitor's keyword arguments (``noise`` is derived, left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


def check_state_version(state_dict: Any, owner: str) -> None:
    """Reject a checkpoint state that is not a monitor state of this version.

    Raises:
        LedgerMismatchError: on another version or a malformed state.
    """
    if not isinstance(state_dict, dict) or state_dict.get("version") != MONITOR_STATE_VERSION:
        got = state_dict.get("version") if isinstance(state_dict, dict) else state_dict
        raise LedgerMismatchError(
            f"Expected a {owner} state of version {MONITOR_STATE_VERSION}, but got version "
            f"{got!r}. Resume with the lightning_unlearn version that wrote the checkpoint, or "
            "use another `state_key` to start a fresh ledger."
        )


def check_resume(saved: dict[str, Any], mine: dict[str, Any], what: str) -> None:
    """Check that a saved ledger's run metadata matches this run's.

    Args:
        saved: the metadata stored with the saved ledger.
        mine: the metadata of the current run.
        what: how the saved ledger is named in the message.

    Raises:
        LedgerMismatchError: on another data set (size or fingerprint) or other monitor settings.
    """
    if saved.get("num_samples", mine["num_samples"]) != mine["num_samples"]:
        raise LedgerMismatchError(
            f"{what} has num_samples={saved['num_samples']}, but the training data has "
            f"{mine['num_samples']} examples: it belongs to another data set. Resume with the "
            "same data, or start a fresh ledger (another `state_key`, or a new monitor)."
        )
    for key in _RESUME_KEYS:
        if key in saved and saved[key] != mine[key]:
            raise LedgerMismatchError(
                f"{what} has {key}={saved[key]!r}, but this run has {key}={mine[key]!r}; "
                "losses of different runs cannot be added. Resume with the same data and "
                "monitor settings, or start a fresh ledger (another `state_key`)."
            )
