"""giraffe: a complete, readable language-model system."""
