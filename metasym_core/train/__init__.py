"""Meta-training (`Trainer`), K-shot evaluation and the `train` / `evaluate` commands."""
