"""Training code for boxinst-serve (losses, targets, training loop)."""
