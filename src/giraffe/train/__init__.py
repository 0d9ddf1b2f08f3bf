"""Training: objectives (causal LM, masked LM, span corruption), data, the trainer loop.

Modules are imported directly (`giraffe.train.objectives`, ...): importing this package
loads nothing heavy.
"""
