"""Per-instance privacy accounting (THEORY §1-§5): pure tensor math, no lightning, no opacus.

- ``conventions``: gradient norms to ratios ``r`` (THEORY §1).
- ``rdp``: per-step per-instance Rényi loss (THEORY §2).
- ``ledger``: the per-example table ``P(x, alpha)`` (THEORY §3).
- ``conversion``: ``(epsilon, delta)`` and the worst case of a run (THEORY §4).
- ``bounds``: unlearning steps (THEORY §5, derived constants).
"""

from lightning_unlearn.accounting.bounds import (
    StepModel,
    UnlearningConstants,
    fit_step_model,
    forget_set_privacy_loss,
    unlearning_steps,
)
from lightning_unlearn.accounting.conventions import (
    Convention,
    NoiseConfig,
    dpsgd_ratios,
    sgld_ratios,
)
from lightning_unlearn.accounting.conversion import (
    WorstCaseAccountant,
    rdp_to_epsilon,
    worst_case_epsilon,
    worst_case_rdp,
)
from lightning_unlearn.accounting.ledger import LEDGER_FORMAT_VERSION, PrivacyLedger
from lightning_unlearn.accounting.rdp import (
    DEFAULT_ALPHAS,
    per_step_rdp,
    step_rdp_in_pieces,
    validate_alphas,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "LEDGER_FORMAT_VERSION",
    "Convention",
    "NoiseConfig",
    "PrivacyLedger",
    "StepModel",
    "UnlearningConstants",
    "WorstCaseAccountant",
    "dpsgd_ratios",
    "fit_step_model",
    "forget_set_privacy_loss",
    "per_step_rdp",
    "rdp_to_epsilon",
    "sgld_ratios",
    "step_rdp_in_pieces",
    "unlearning_steps",
    "validate_alphas",
    "worst_case_epsilon",
    "worst_case_rdp",
]
