"""What every generator shares about the tokenizer whose codes it models.

A generator references its tokenizer instead of embedding it: the config holds the tokenizer's Hub
folder or repo id and the first ``len(codebook_sizes)`` of its codebooks are modelled, so a
generator folder stays small and any tokenizer (audio, image, video) plugs in. A tokenizer whose
codebooks do not fit the backbone's vocabulary fails with both named.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class TokenGenerator:
    """Mixin for generator modules with ``self.tokenizer_id`` and ``self.backbone.codebook_sizes``."""

    tokenizer_id: str

    @property
    def codebook_sizes(self) -> list[int]:
        return self.backbone.codebook_sizes

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    def check_tokenizer(self, codebook_sizes: Sequence[int], *, name: str) -> None:
        """Raise unless the tokenizer's first codebooks are exactly the backbone's vocabulary."""
        sizes = list(codebook_sizes)[: self.num_codebooks]
        if sizes != self.codebook_sizes:
            raise ValueError(f"tokenizer {name} has codebook sizes {list(codebook_sizes)}, but the backbone's "
                             f"vocabulary is {self.codebook_sizes} ({self.num_codebooks} codebooks)")

    def load_tokenizer(self, tokenizer: str | None = None, *, near: str | os.PathLike | None = None):
        """The tokenizer (``tokenizer``, else the configured one), checked against the vocabulary. A
        relative folder that does not exist is also looked for next to ``near`` (this model's folder)."""
        from mmtok.hub import load_pretrained

        name = tokenizer or self.tokenizer_id
        if not os.path.exists(name) and near is not None and (Path(near).parent / Path(name).name).is_dir():
            name = str(Path(near).parent / Path(name).name)
        model = load_pretrained(name).eval()
        self.check_tokenizer(model.codebook_sizes, name=name)
        return model
