"""A small CNN digit classifier: the embedded judge of generated and reconstructed digit images.

It serves three roles, the image counterpart of the phoneme recognizer (:mod:`mmtok.asr`):

- **judge** of class-conditional samples and of tokenizer reconstructions: :meth:`classify` gives the
  digit it reads, so "does a generated seven look like a seven" is an accuracy
  (:func:`mmtok.metrics.image.classifier_accuracy`);
- **feature network of a Fréchet distance** (Heusel et al. 2017, "GANs trained by a two time-scale
  update rule converge to a local Nash equilibrium", eq. 6): :meth:`features` is the penultimate
  layer, the globally average-pooled last block, used in place of Inception-v3's pool3 by
  :func:`mmtok.metrics.image.frechet_distance`; always report it next to its real-vs-real floor;
- **perceptual loss network** (Johnson et al. 2016, "Perceptual losses for real-time style transfer",
  eq. 2): :meth:`feature_maps` returns the activations of every block.

Architecture: ``len(widths)`` blocks of two 3x3 conv + BatchNorm + ReLU, each block but the last followed
by a 2x2 max-pool; global average pooling; dropout; one linear layer over ``num_classes``. The judge is
used in eval mode (``load_pretrained`` returns it so), where BatchNorm is a fixed affine map.

Shapes: ``images: FloatTensor [B, C, H, W]`` in [0, 1] with C = 1 or 3 (converted to the model's
``channels``: RGB -> gray by the channel mean, gray -> RGB by repetition), white strokes on black like
the digits corpus; any H, W >= 2 ** (len(widths) - 1) (trained at 32 x 32).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmtok.hub import HubMixin


class DigitClassifier(nn.Module, HubMixin):
    """CNN over ``[B, C, H, W]`` images in [0, 1] -> logits ``[B, num_classes]``."""

    def __init__(self, *, channels: int = 1, num_classes: int = 10, widths: list[int] | tuple[int, ...] = (32, 64, 128),
                 dropout: float = 0.2):
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"DigitClassifier: channels must be 1 or 3, got {channels}")
        if num_classes < 2 or not widths or min(widths) < 1:
            raise ValueError(f"DigitClassifier: need num_classes >= 2 and positive widths, got {num_classes}, "
                             f"{list(widths)}")
        self.channels = channels
        self.num_classes = num_classes
        blocks, previous = [], channels
        for width in widths:
            blocks.append(nn.Sequential(
                nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2)  # between blocks
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(previous, num_classes)

    @property
    def feature_dim(self) -> int:
        """D of :meth:`features`: the width of the last block."""
        return self.head.in_features

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"DigitClassifier: images must be [B, C, H, W] with C = 1 or 3, got "
                             f"{tuple(images.shape)}")
        if images.shape[1] != self.channels:
            images = images.mean(1, keepdim=True) if self.channels == 1 else images.expand(-1, 3, -1, -1)
        return images.to(self.head.weight.dtype)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block, for a perceptual loss: a list of ``len(widths)`` tensors, the i-th
        ``[B, widths[i], H // 2**i, W // 2**i]`` (after the block's last ReLU; the 2 x 2 max-pool sits
        between blocks; at 32 x 32 with the default widths: [B, 32, 32, 32], [B, 64, 16, 16], [B, 128, 8, 8]).

        This contract is stable: the list is ordered from the input to the last block and is
        differentiable with respect to ``images`` (freeze the judge with ``requires_grad_(False)`` and
        keep it in eval mode when it serves as a loss)."""
        x = self._prepare(images)  # [B, channels, H, W]
        maps = []
        for index, block in enumerate(self.blocks):
            x = block(self.pool(x) if index else x)  # [B, widths[i], H / 2**i, W / 2**i]
            maps.append(x)
        return maps

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate layer, FloatTensor ``[B, feature_dim]``: the last block averaged over (H, W)."""
        return self.feature_maps(images)[-1].mean(dim=(-2, -1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        return self.head(self.dropout(self.features(images)))

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The predicted class of each image, LongTensor ``[B]`` (in eval mode, as ``load_pretrained``
        returns the model: in train mode dropout and batch statistics would apply)."""
        return self(images).argmax(-1)


def labelled_images(data: str | Path, *, split: str = "test", channels: int = 1, max_items: int | None = None,
                    batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``split`` in a labelled image corpus (a folder with ``manifest.jsonl`` whose
    entries have an integer ``label``), in manifest order: (FloatTensor [N, channels, H, W] in [0, 1],
    LongTensor [N]); the first ``max_items`` with it."""
    from mmtok.data.images import ImageDataModule

    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    module = ImageDataModule(path=str(data), channels=channels)
    module.setup()
    dataset = module.datasets[split]
    if max_items is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(max_items, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=module.collate)
    images, labels = [], []
    for batch in loader:
        if batch is None:
            continue
        if not isinstance(batch.get("labels"), torch.Tensor):
            raise ValueError(f"{data}: the {split} split has no integer 'label' per image to score against")
        images.append(batch["image"])
        labels.append(batch["labels"])
    if not images:
        raise ValueError(f"{data}: the {split} split has no images")
    return torch.cat(images), torch.cat(labels)


@torch.no_grad()
def evaluate_classifier(classifier: DigitClassifier, data: str | Path, *, split: str = "test",
                        max_items: int | None = None, batch_size: int = 250) -> dict:
    """Accuracy of ``classifier`` on the labelled images of ``split``: ``{"accuracy", "images",
    "per_class": [accuracy of class 0, 1, ...]}`` (None for a class absent from the split)."""
    from mmtok.metrics.image import classifier_accuracy

    images, labels = labelled_images(data, split=split, channels=classifier.channels, max_items=max_items,
                                     batch_size=batch_size)
    per_class = [classifier_accuracy(images[labels == k], labels[labels == k], classifier, batch_size=batch_size)
                 if bool((labels == k).any()) else None for k in range(classifier.num_classes)]
    return {"accuracy": classifier_accuracy(images, labels, classifier, batch_size=batch_size),
            "images": len(labels), "per_class": per_class}
