"""gapwatch detectors: pure, I/O-free statistics (windows, change points, verdicts)."""
