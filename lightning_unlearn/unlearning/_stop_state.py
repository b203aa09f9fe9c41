"""The checkpoint state shared by the stop rules (:class:`~lightning_unlearn.unlearning.
LossCalibratedStopping`, :class:`~lightning_unlearn.unlearning.CalibratedStopping`)."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class TrajectoryStopCallback(Callback):
    """A stop rule's resumable state: the trajectory of its checks and the step it fired at.

    Subclasses set ``_state_version`` and, for more state, override :meth:`_extra_state` and
    :meth:`_load_extra_state`. A state of another version is refused with a message rather than
    half-read.
    """

    _state_version: ClassVar[int]
    trajectory: list[dict[str, Any]]
    stopped_step: int | None

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        return None

    def _resumed_stopped(self, trainer: pl.Trainer) -> bool:
        """Stop at once a run resumed after the rule already fired; ``True`` if so."""
        if self.stopped_step is None:
            return False
        trainer.should_stop = True
        return True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self._state_version,
            "trajectory": [dict(r) for r in self.trajectory],
            "stopped_step": self.stopped_step,
            **self._extra_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != self._state_version or "trajectory" not in state_dict:
            raise ValueError(
                f"Expected a {type(self).__name__} state of version {self._state_version}, but "
                f"got {state_dict.get('version')!r}; resume without this callback's state."
            )
        self.trajectory = [dict(r) for r in state_dict["trajectory"]]
        self.stopped_step = state_dict["stopped_step"]
        self._load_extra_state(state_dict)
