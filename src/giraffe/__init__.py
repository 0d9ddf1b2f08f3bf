"""giraffe: a complete, readable language-model system, from tokens to text and back.

    import giraffe
    lm = giraffe.load("smollm2-135m-instruct")   # or a .gguf file or a Hugging Face folder
    print(lm.generate("The giraffe is", max_new_tokens=30, temperature=0.7, top_p=0.9, seed=1))

Heavy modules load on first use, so `import giraffe` stays quick.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["LanguageModel", "load", "load_tokenizer"]


def __getattr__(name: str):
    if name in __all__:
        from giraffe import lm

        return getattr(lm, name)
    raise AttributeError(f"module 'giraffe' has no attribute {name!r}")
