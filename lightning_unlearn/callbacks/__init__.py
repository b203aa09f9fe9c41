"""Lightning callbacks: PerInstancePrivacyMonitor and the difficulty monitors."""

from lightning_unlearn.callbacks.difficulty_monitor import DifficultyMonitor
from lightning_unlearn.callbacks.privacy_monitor import PerInstancePrivacyMonitor

__all__ = ["DifficultyMonitor", "PerInstancePrivacyMonitor"]
