"""Training: stages, the DeepSpeed trainer, launch, checkpoints and preemption."""
