"""Conditions shared by every generator: each turns one batch field into prefix embeddings.

A :class:`~mmtok.conditioning.base.Conditioner` joins its conditions into one left-padded
:class:`~mmtok.conditioning.base.Prefix` (embeddings ``[B, P, D]``, validity, positions), which AR
decoders read before their steps and masked-diffusion denoisers attend to. Every condition has a
learned null embedding, used when the condition is absent or dropped in training, which is what
classifier-free guidance compares against.
"""

from mmtok.conditioning.base import Condition, Conditioner, Prefix, build_condition
from mmtok.conditioning.conditions import AudioPromptCondition, ClassCondition, PhonemeCondition
from mmtok.conditioning.text import TextEncoderCondition

__all__ = ["AudioPromptCondition", "ClassCondition", "Condition", "Conditioner", "PhonemeCondition", "Prefix",
           "TextEncoderCondition", "build_condition"]
