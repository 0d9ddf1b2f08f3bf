"""Quantized weights: ggml block formats (and, later, packed kernels and PTQ/QAT).

Knows bytes and numbers, not file names or models.
"""
