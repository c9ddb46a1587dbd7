"""The train and generate stages: the networks, the pure GAN step, the loop around it, checkpoints,
sampling, and the CPU-only kernels the loop swaps in. Every source file here is part of a training
run's identity (checkpoint.run_identity)."""
