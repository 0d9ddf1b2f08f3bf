"""What the explainers share about their input: text -> ids, and which models fit a view.

A model here is anything with `.model` (a giraffe Decoder or Encoder) and `.tokenizer`:
`LanguageModel` or `SentenceEncoder`. This module does not load models.
"""

from __future__ import annotations

from giraffe.config import InputError


class ExplainInputError(InputError):
    """What an explainer was asked cannot be shown (empty or too long a text, a layer that
    does not exist, a bad setting); the message says what to change. Any other error from
    an explainer is a fault of giraffe's (a server answers it with a 500, not a 400)."""


def is_encoder(lm) -> bool:
    return getattr(lm.model.config, "kind", "decoder") == "encoder"


def require_decoder(lm, view: str) -> None:
    """Views built on next-token scores need a decoder; say so instead of failing oddly."""
    if is_encoder(lm):
        raise ExplainInputError(
            f"{view} needs a decoder (a model that predicts the next token), and "
            f"{getattr(lm, 'source', 'this model') or 'this model'} is an encoder; "
            "attention maps, embeddings and sizes work with encoders."
        )


def encode_text(lm, text: str) -> list[int]:
    """Token ids of `text` as the model sees it (special tokens the tokenizer adds)."""
    if not text:
        raise ExplainInputError("the text is empty: give some text to look inside.")
    ids = lm.tokenizer.encode(text, add_special_tokens=True)
    context = lm.model.config.max_position_embeddings
    if len(ids) > context:
        raise ExplainInputError(
            f"the text is {len(ids)} tokens long but the model's context is {context}; shorten it."
        )
    return ids
