"""Autoregressive generation over any tokenizer's codes (through a codebook pattern)."""
