"""Configuration checks of :class:`~lightning_unlearn.callbacks.PerInstancePrivacyMonitor`.

Argument validation (STYLE §7: "Expected `x` to be ..., but got ...") and the checks applied
when a saved monitor state is resumed (STYLE §5: a named error that says how to recover).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from lightning_unlearn.errors import LedgerMismatchError
from lightning_unlearn.grad_norms import GradSampleMode, LossReduction

__all__ = [
    "MONITOR_STATE_VERSION",
    "Estimator",
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
