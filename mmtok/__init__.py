"""mmtok: multimodal discrete-token generation.

Tokenizers (``mmtok.codecs``) turn media into :class:`~mmtok.tokens.Tokens`; generators read
and write those tokens; Lightning recipes in ``recipes/`` train both.
"""

from mmtok.tokens import Tokens

__all__ = ["Tokens"]
__version__ = "0.1.0"
