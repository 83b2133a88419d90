"""Diffusion: log-SNR schedules, parameterisations and loss, samplers."""
