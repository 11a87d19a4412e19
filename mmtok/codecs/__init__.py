"""Tokenizers: media <-> :class:`~mmtok.tokens.Tokens`."""

from mmtok.codecs.base import Tokenizer
from mmtok.codecs.rvq import RVQCodec

__all__ = ["RVQCodec", "Tokenizer"]
