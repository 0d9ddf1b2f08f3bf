"""Views into models: what they cost and what they do inside.

`sizes` (parameters, memory, KV cache, FLOPs, what fits), `attention` (maps of every
layer and head, HTML and PNG), `next_token` (expected next tokens, surprisal, sampling
reshaped), `lens` (logit lens), `projector` (token embeddings), `decoding_lab`
(strategies side by side) and `command` (the `giraffe explain` door onto all of them).
Explainers read models and configs through the public facades; nothing below them
imports this package.
"""
