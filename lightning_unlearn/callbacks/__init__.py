"""Lightning callbacks: PerInstancePrivacyMonitor and the difficulty monitors."""

from lightning_unlearn.callbacks.privacy_monitor import PerInstancePrivacyMonitor

__all__ = ["PerInstancePrivacyMonitor"]
