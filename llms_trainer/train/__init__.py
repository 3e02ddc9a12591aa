"""Training: the engine (one loop), checkpoints, stages, and `run` (a whole run from a config)."""
