"""Views into models: sizes and memory now; attention, logit lens and projections later.

Explainers read models and configs; nothing below them imports this package.
"""
