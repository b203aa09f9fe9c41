"""Lightning callbacks: PerInstancePrivacyMonitor and the difficulty monitors."""
