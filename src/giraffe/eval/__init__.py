"""Evaluation: perplexity and bits per byte (multiple-choice scoring and KL come later).

Reads models through `LanguageModel`/`Decoder` forward passes; never changes them.
"""
