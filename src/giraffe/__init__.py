"""giraffe: a complete, readable language-model system, from tokens to text and back.

    import giraffe
    lm = giraffe.load("smollm2-135m-instruct")   # or a .gguf file or a Hugging Face folder
    print(lm.generate("The giraffe is", max_new_tokens=30, temperature=0.7, top_p=0.9, seed=1))

    tuned = giraffe.load("smollm2-135m-instruct", adapter="my-lora")  # + a LoRA adapter
    enc = giraffe.load("minilm-l6")              # an encoder folder: a SentenceEncoder
    vectors = enc.embed(["No, I am not a giraffe."])   # numpy (1, 384), unit length

Heavy modules load on first use, so `import giraffe` stays quick.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["LanguageModel", "SentenceEncoder", "load", "load_tokenizer"]


def load(name_or_path=None, **kw):
    """A model alias or path -> `LanguageModel` (decoders) or `SentenceEncoder` (encoders).

    The dispatch lives here because `giraffe.lm` and `giraffe.embedder` are one layer and
    must not import each other; keyword arguments go to the loader that is chosen.
    """
    from giraffe.collector import collector_paused

    with collector_paused():  # the imports (torch) and the load: ~0.2 s less
        return _load(name_or_path, **kw)


def _load(name_or_path, **kw):
    from giraffe import lm  # (torch only where the model needs it: giraffe.lm.load)
    from giraffe.formats.registry import is_encoder

    adapter = kw.pop("adapter", None)
    if adapter is not None:  # a LoRA adapter folder (PEFT layout) on top of the model
        from giraffe.train.adapter import load_with_adapter

        return load_with_adapter(name_or_path or lm.DEFAULT_CHAT_MODEL, adapter, **kw)
    if name_or_path is None:
        return lm.load(**kw)
    if is_encoder(name_or_path):
        from giraffe import embedder

        if kw:
            raise TypeError(
                f"{name_or_path} is a sentence encoder; {', '.join(kw)} applies to language models"
            )
        return embedder.load(name_or_path)
    return lm.load(name_or_path, **kw)


def __getattr__(name: str):
    if name == "SentenceEncoder":
        from giraffe import embedder

        return embedder.SentenceEncoder
    if name == "load_tokenizer":  # (no torch: tokenizing needs no model)
        from giraffe.formats.registry import load_tokenizer

        return load_tokenizer
    if name in __all__:
        from giraffe import lm

        return getattr(lm, name)
    raise AttributeError(f"module 'giraffe' has no attribute {name!r}")
