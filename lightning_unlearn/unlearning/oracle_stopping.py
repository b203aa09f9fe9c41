"""Oracle-matched stopping: stop once the forget set's mean loss reaches a retrained oracle's."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from lightning_unlearn.unlearning.stopping import LossCalibratedStopping
from lightning_unlearn.validation import check_float

__all__ = ["OracleMatchStopping"]


class OracleMatchStopping(LossCalibratedStopping):
    r"""Stop when the forget set's mean loss is within ``tau`` of the oracle's (THEORY §6).

    The rule of THEORY §6's steps-to-unlearn: with :math:`\bar\ell_F(k)` the forget set's mean
    loss after :math:`k` steps and :math:`\bar\ell_F^{\mathrm{oracle}}` that of a model
    retrained without the forget set, a check is satisfied when

    .. math::

        \big|\bar\ell_F(k) - \bar\ell_F^{\mathrm{oracle}}\big| \le \tau .

    The check schedule, logging, checkpointed trajectory and cross-rank decision are those of
    :class:`~lightning_unlearn.unlearning.stopping.LossCalibratedStopping`; only the rule
    differs. The paper's experiment uses it to measure steps-to-unlearn without running past
    the step where the oracle's level is reached.

    Args:
        oracle_forget_loss: the oracle's mean loss on the forget set (finite).
        tau: the tolerance :math:`\tau \ge 0` in nats.
        check_every_n_steps: steps between checks.
        heldout_dataloader: loader of the held-out set (only logged by this rule; a small one
            keeps the checks cheap); default ``trainer.datamodule.heldout_dataloader()``.

    Raises:
        InvalidArgumentError: ``oracle_forget_loss`` is not a finite number.
        ValueError: ``tau`` or ``check_every_n_steps`` is out of range.

    Example:
        >>> stop = OracleMatchStopping(oracle_forget_loss=1.2, tau=0.1, check_every_n_steps=5)
        >>> stop.is_satisfied({"forget_loss": 1.15}), stop.is_satisfied({"forget_loss": 0.5})
        (True, False)
    """

    def __init__(
        self,
        oracle_forget_loss: float,
        tau: float,
        check_every_n_steps: int,
        heldout_dataloader: Any = None,
    ) -> None:
        super().__init__(
            check_every_n_steps=check_every_n_steps,
            tolerance=tau,
            heldout_dataloader=heldout_dataloader,
        )
        # the oracle's level is the target: a NaN or missing one would never (or always) match
        self.oracle_forget_loss = check_float(
            "oracle_forget_loss", oracle_forget_loss, minimum=None
        )

    @override
    def is_satisfied(self, record: dict[str, Any]) -> bool:
        return abs(record["forget_loss"] - self.oracle_forget_loss) <= self.tolerance
