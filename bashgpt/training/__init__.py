"""Training: the run on HF Trainer, its options, stability and safety, checkpoints, estimates, reports."""
