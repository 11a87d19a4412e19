"""Masked (absorbing-state) diffusion over any tokenizer's codes: training objective and samplers."""
