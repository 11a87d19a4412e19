"""Models that score other models: the digit classifier (judge, FID feature network, perceptual loss net)."""

from mmtok.judges.digits import DigitClassifier

__all__ = ["DigitClassifier"]
