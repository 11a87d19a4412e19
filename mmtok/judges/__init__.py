"""Models that score other models: the digit classifier (judge, FID feature network, perceptual loss net)
and the speaker encoder (speaker similarity of generated speech)."""

from mmtok.judges.digits import DigitClassifier
from mmtok.judges.speakers import SpeakerEncoder

__all__ = ["DigitClassifier", "SpeakerEncoder"]
