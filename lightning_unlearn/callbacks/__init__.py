"""Lightning callbacks: PerInstancePrivacyMonitor and the difficulty monitors."""

from lightning_unlearn.callbacks._loss_weights import token_mean_weights
from lightning_unlearn.callbacks._monitor_config import MonitorConfig
from lightning_unlearn.callbacks._self_check import SelfCheckResult
from lightning_unlearn.callbacks.difficulty_monitor import DifficultyMonitor
from lightning_unlearn.callbacks.privacy_monitor import PerInstancePrivacyMonitor

__all__ = [
    "DifficultyMonitor",
    "MonitorConfig",
    "PerInstancePrivacyMonitor",
    "SelfCheckResult",
    "token_mean_weights",
]
