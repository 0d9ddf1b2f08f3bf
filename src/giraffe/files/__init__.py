"""Byte-level readers of file formats, below everything that interprets them.

Knows layouts of bytes (the GGUF header), not models or vocabularies: both
`giraffe.tokenizer` and `giraffe.formats` read through it.
"""
