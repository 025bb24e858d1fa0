"""gapwatch streams: Faust wiring, CLI, broker launcher, I/O. No statistics here."""
