"""The embedded moving-digits corpus, video loading and the Lightning data module for video.

**Moving digits** (Moving-MNIST style, Srivastava et al. 2015): 1 to ``max_digits`` real
handwritten digits (:mod:`mmtok.data.images`, distinct classes per clip) bounce inside a square
black frame, composited with a pixel-wise max. Each digit starts at a random place, moves in one of
eight directions at 1..3 pixels per frame along each moving axis, and reflects off the frame's
edges; clips have a random number of frames in ``min_frames..max_frames``. A clip of split s
only uses digit images of split s of the digits corpus with the same seed, so test clips hold
digits never seen in training. The build is a folder::

    out_dir/corpus.json          build parameters (a cache key)
    out_dir/manifest.jsonl       one JSON object per clip, sorted by file name
    out_dir/clips/<id>.mp4       H.264 (libx264, yuv420p), or .npz (exact uint8 frames) or .gif

Manifest keys: ``video`` (path relative to ``out_dir``), ``num_frames``, ``fps``, ``frame_size``,
``text`` (one caption phrasing drawn by seed), ``captions`` (every phrasing, e.g. "the digit 3
moves left while the digit 8 moves down"), ``digits`` (labels), ``source_indices`` (rows of the
digit source), ``directions`` (initial direction names), ``speeds`` (pixels per frame),
``velocities`` (initial [dx, dy], y pointing down), ``positions`` (per digit, [x, y] of the
digit's top-left corner in every frame), ``bounces`` (reflections per digit) and ``split``.
Clip i is drawn from its own seeded generator, so one seed always gives a byte-identical manifest
and identical files.

**Loading** mirrors :mod:`mmtok.data.images` (manifest, folder holding one, or plain folder of
mp4/webm/gif/mov/mkv/avi/npz with sidecar ``.txt`` captions; bad lines and files raise errors
naming them, or are skipped and counted). Batches are dicts: ``video`` FloatTensor
[B, C, T, H, W] in [0, 1], zero-padded along T to the longest item, ``lengths`` LongTensor [B] of
valid frames, ``path``, and ``text``/``labels`` as for images.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmtok.data.images import DIGIT_WORDS, digit_splits, load_digit_source, passthrough
from mmtok.data.loading import unseeded_rng
from mmtok.data.manifest import (
    ManifestDataModule,
    ManifestDataset,
    assign_splits,
    corpus_is_cached,
    remove_stale_files,
    write_corpus_manifest,
)
from mmtok.media import VIDEO_SUFFIXES, VIDEO_WRITE_SUFFIXES, MediaFileError, read_video, write_video

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# name -> unit step (dx, dy); y points down, as in image rows
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
    "up-left": (-1, -1), "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1),
}
MAX_SPEED = 3


# ----------------------------------------------------------------------------- moving digits


@dataclass(frozen=True)
class DigitMotion:
    """One digit of a clip: its class, source row, direction, speed and per-frame positions."""

    label: int
    source_index: int
    direction: str
    speed: int
    positions: tuple[tuple[int, int], ...]  # [T] of (x, y), the top-left corner
    bounces: int

    @property
    def velocity(self) -> tuple[int, int]:
        """Initial (dx, dy) in pixels per frame."""
        dx, dy = DIRECTIONS[self.direction]
        return dx * self.speed, dy * self.speed


def bounce_trajectory(
    *, start: tuple[int, int], velocity: tuple[int, int], num_frames: int, limit: int
) -> tuple[list[tuple[int, int]], int]:
    """Positions of a point moving at ``velocity`` inside [0, limit]^2, reflecting off the edges.

    Returns ([num_frames] positions (x, y), the first one ``start``; number of reflections).
    """
    (x, y), (dx, dy) = start, velocity
    if not (0 <= x <= limit and 0 <= y <= limit):
        raise ValueError(f"bounce_trajectory: start {start} is outside [0, {limit}]^2")
    positions, bounces = [(x, y)], 0
    for _ in range(num_frames - 1):
        x, y = x + dx, y + dy
        if x < 0 or x > limit:
            x, dx, bounces = (-x if x < 0 else 2 * limit - x), -dx, bounces + 1
        if y < 0 or y > limit:
            y, dy, bounces = (-y if y < 0 else 2 * limit - y), -dy, bounces + 1
        positions.append((x, y))
    return positions, bounces


def render_clip(digits: list[np.ndarray], positions: list[list[tuple[int, int]]], *, frame_size: int) -> np.ndarray:
    """Draws digits (uint8 [S, S] each) at their (x, y) positions -> uint8 frames [T, size, size].

    Overlapping digits combine with a pixel-wise max, as in Moving MNIST.
    """
    frames = np.zeros((len(positions[0]), frame_size, frame_size), dtype=np.uint8)  # [T, H, W]
    for digit, track in zip(digits, positions):
        height, width = digit.shape
        for frame, (x, y) in zip(frames, track):
            window = frame[y:y + height, x:x + width]
            np.maximum(window, digit, out=window)
    return frames


def clip_captions(motions: list[DigitMotion]) -> list[str]:
    """Every caption phrasing of a clip, e.g. "the digit 3 moves left while the digit 8 moves down".

    A digit that reflects off an edge during the clip "bounces"; directions are the initial ones.
    """
    first = " while ".join(
        f"the digit {m.label} moves {m.direction}" + (" and bounces off the wall" if m.bounces else "")
        for m in motions
    )
    second = " and ".join(
        f"a handwritten {DIGIT_WORDS[m.label]} moving {m.direction}" + (" then bouncing back" if m.bounces else "")
        for m in motions
    )
    third = ", ".join(f"{m.label} goes {m.direction}" + (" and bounces" if m.bounces else "") for m in motions)
    return [first, second, third]


def _draw_clip(rng: random.Random, *, pool: dict[int, list[int]], num_frames: int, num_digits: int,
               limit: int) -> list[DigitMotion]:
    motions = []
    for label in rng.sample(sorted(pool), num_digits):
        source_index = rng.choice(pool[label])
        direction = rng.choice(sorted(DIRECTIONS))
        speed = rng.randint(1, MAX_SPEED)
        start = (rng.randint(speed, limit - speed), rng.randint(speed, limit - speed))  # no bounce on step 1
        dx, dy = DIRECTIONS[direction]
        positions, bounces = bounce_trajectory(start=start, velocity=(dx * speed, dy * speed),
                                               num_frames=num_frames, limit=limit)
        motions.append(DigitMotion(label=label, source_index=source_index, direction=direction, speed=speed,
                                   positions=tuple(positions), bounces=bounces))
    return motions


def build_moving_digits(
    out_dir: str | Path,
    *,
    num_clips: int = 2000,
    seed: int = 0,
    frame_size: int = 64,
    min_frames: int = 5,
    max_frames: int = 33,
    max_digits: int = 2,
    fps: int = 10,
    video_format: str = "mp4",
    crf: int = 18,
    source: str = "mnist",
    progress: bool = True,
) -> Path:
    """Builds (or finds already built) the moving-digits corpus in ``out_dir``; returns its manifest.

    ``num_clips`` clips of ``frame_size`` x ``frame_size`` gray frames, ``min_frames..max_frames``
    frames long, with 1..``max_digits`` digits each, written as ``video_format`` (mp4, npz or gif;
    mp4 at libx264 quality ``crf``). Splits are ~90/5/5 (:func:`mmtok.data.manifest.assign_splits`).
    A folder that already holds a build with the same parameters and all of its clips is returned
    untouched.
    """
    suffix = f".{video_format}"
    if suffix not in VIDEO_WRITE_SUFFIXES:
        raise ValueError(f"mmtok/data/video.py: video_format must be one of "
                         f"{[s[1:] for s in VIDEO_WRITE_SUFFIXES]}, got {video_format!r}")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"mmtok/data/video.py: need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    if not 1 <= max_digits <= 10:
        raise ValueError(f"mmtok/data/video.py: max_digits must be in 1..10, got {max_digits}")
    images, labels = load_digit_source(source)
    limit = frame_size - images.shape[-1]
    if limit < 2 * MAX_SPEED:
        raise ValueError(f"mmtok/data/video.py: frame_size {frame_size} leaves no room to move a "
                         f"{images.shape[-1]}-pixel digit; need frame_size >= {images.shape[-1] + 2 * MAX_SPEED}")
    out_dir = Path(out_dir)
    params = {
        "format_version": FORMAT_VERSION, "num_clips": num_clips, "seed": seed, "frame_size": frame_size,
        "min_frames": min_frames, "max_frames": max_frames, "max_digits": max_digits, "fps": fps,
        "video_format": video_format, "crf": crf if video_format == "mp4" else None, "source": source,
    }
    if corpus_is_cached(out_dir, params, key="video", count_key="num_clips"):
        log.info("moving digits corpus in %s is up to date (%d clips)", out_dir, num_clips)
        return out_dir / "manifest.jsonl"
    digit_split = digit_splits(labels, seed=seed)
    pools = {split: {} for split in ("train", "valid", "test")}
    for index, (label, split) in enumerate(zip(labels, digit_split)):
        pools[split].setdefault(int(label), []).append(index)
    splits = assign_splits(num_clips, seed=seed)
    width = max(5, len(str(num_clips - 1)))
    (out_dir / "corpus.json").unlink(missing_ok=True)  # an interrupted build must not look finished
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    rows, written = [], set()
    for number, split in enumerate(tqdm(splits, desc="moving digits", unit="clip", disable=not progress)):
        rng = random.Random(f"mmtok-moving-digits-{seed}-{number}")
        num_frames = rng.randint(min_frames, max_frames)
        motions = _draw_clip(rng, pool=pools[split], num_frames=num_frames,
                             num_digits=rng.randint(1, max_digits), limit=limit)
        frames = render_clip([images[m.source_index] for m in motions], [list(m.positions) for m in motions],
                             frame_size=frame_size)  # [T, H, W]
        relative = f"clips/clip{number:0{width}d}{suffix}"
        written.add(write_video(out_dir / relative, frames, fps=fps, crf=crf))
        captions = clip_captions(motions)
        rows.append({
            "video": relative, "num_frames": num_frames, "fps": fps, "frame_size": frame_size,
            "text": rng.choice(captions), "captions": captions,
            "digits": [m.label for m in motions], "source_indices": [m.source_index for m in motions],
            "directions": [m.direction for m in motions], "speeds": [m.speed for m in motions],
            "velocities": [list(m.velocity) for m in motions],
            "positions": [[list(p) for p in m.positions] for m in motions],
            "bounces": [m.bounces for m in motions], "split": split,
        })
    remove_stale_files(out_dir / "clips", "clip*.*", keep=written)
    return write_corpus_manifest(out_dir, rows, params, key="video")


# ----------------------------------------------------------------------------- dataset and data module


class VideoDataset(ManifestDataset):
    """Video items from manifest-style entries (dicts with an absolute ``video`` path).

    An item is a dict: ``video`` FloatTensor [channels, T, H, W] in [0, 1], ``length`` (valid
    frames), ``path`` and the entry's ``text``/``label`` when present. With ``num_frames`` T is
    that length: a random window of longer clips, zero-padded shorter ones; None keeps every
    frame. With ``frame_size`` (height, width) every clip must have that frame size: others raise
    MediaFileError naming the file, or with ``resize`` are resized (bilinear, antialiased). Files
    that cannot be decoded, hold 0 frames or change frame size raise MediaFileError too; with
    ``skip_bad_files`` they give None (dropped by :func:`collate_videos`), a logged warning and
    one more :attr:`num_skipped`.
    """

    key = "video"
    error = MediaFileError

    def __init__(
        self,
        entries: list[dict],
        *,
        channels: int = 3,
        frame_size: int | tuple[int, int] | None = None,
        resize: bool = False,
        num_frames: int | None = None,
        skip_bad_files: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"VideoDataset: channels must be 1 or 3, got {channels}")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"VideoDataset: num_frames must be >= 1 or None, got {num_frames}")
        if isinstance(frame_size, int):
            frame_size = (frame_size, frame_size)
        if frame_size is not None and (len(frame_size) != 2 or min(frame_size) < 1):
            raise ValueError(f"VideoDataset: frame_size must be a positive int or (height, width), got {frame_size}")
        super().__init__(entries, skip_bad_files=skip_bad_files)
        self.channels = channels
        self.frame_size = None if frame_size is None else (int(frame_size[0]), int(frame_size[1]))
        self.resize = resize
        self.num_frames = num_frames

    def load(self, path: str) -> torch.Tensor:
        video, _ = read_video(path, channels=self.channels)  # [C, T, H, W]
        if self.frame_size is None or tuple(video.shape[-2:]) == self.frame_size:
            return video
        if not self.resize:
            raise MediaFileError(f"{path}: frames are {video.shape[-2]}x{video.shape[-1]} (H x W), expected "
                                 f"{self.frame_size[0]}x{self.frame_size[1]}; set resize=True to resize them")
        frames = video.transpose(0, 1)  # [T, C, H, W]
        frames = torch.nn.functional.interpolate(frames, size=self.frame_size, mode="bilinear", antialias=True,
                                                 align_corners=False)
        return frames.transpose(0, 1).clamp(0.0, 1.0).contiguous()

    def _crop(self, video: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, int]:
        """video [C, T, H, W] -> ([C, num_frames, H, W], valid frames)."""
        crop, total = self.num_frames, video.shape[1]
        if total >= crop:
            start = rng.randrange(total - crop + 1)
            return video[:, start:start + crop], crop
        return torch.nn.functional.pad(video, (0, 0, 0, 0, 0, crop - total)), total

    def make_item(self, entry: dict, video: torch.Tensor, rng: random.Random | None) -> dict:
        length = video.shape[1]
        if self.num_frames is not None:
            video, length = self._crop(video, rng or unseeded_rng())
        item = {"video": video, "length": length, "path": entry["video"]}
        item.update({key: entry[key] for key in ("text", "label") if key in entry})
        return item


def collate_videos(items: list[dict | None]) -> dict | None:
    """Batches dataset items, dropping None (skipped) ones; None when nothing is left.

    Returns ``video`` FloatTensor [B, C, T, H, W] zero-padded along T to the longest item,
    ``lengths`` LongTensor [B], ``path``, and ``text``/``labels`` as :func:`collate_images`.
    Raises ValueError naming two files when their channels or frame sizes differ.
    """
    items = [item for item in items if item is not None]
    if not items:
        return None
    first = items[0]
    channels, _, height, width = first["video"].shape
    for item in items[1:]:
        if (item["video"].shape[0], *item["video"].shape[2:]) != (channels, height, width):
            shape = (item["video"].shape[0], *item["video"].shape[2:])
            raise ValueError(
                f"collate_videos: {item['path']} has [C, H, W] = {shape} but {first['path']} has "
                f"{(channels, height, width)}; set frame_size (and resize=True) on the data module"
            )
    longest = max(item["video"].shape[1] for item in items)
    video = torch.zeros(len(items), channels, longest, height, width)  # [B, C, T, H, W]
    for row, item in enumerate(items):
        video[row, :, : item["video"].shape[1]] = item["video"]
    lengths = torch.tensor([item["length"] for item in items], dtype=torch.long)
    return passthrough(items, {"video": video, "lengths": lengths})


class VideoDataModule(ManifestDataModule):
    """Train/valid/test video loaders from a manifest, a folder holding one, or a folder of videos.

    ``path`` is a folder with ``manifest.jsonl``, a manifest file, or a plain folder of videos
    (captions from sidecar ``.txt`` files). With ``build_embedded`` and no manifest there,
    :meth:`prepare_data` builds the moving-digits corpus (``num_clips``, ``max_digits`` per clip,
    ``seed``, frames of ``frame_size`` or 64, files of ``video_format``: npz reads 50x faster than mp4 and
    is exact) in ``path``. Training items are random windows of ``num_frames`` frames
    (None: whole clips), shuffled; valid/test items are whole clips, the valid set capped at
    ``max_valid_items``. ``channels``, ``frame_size``, ``resize`` and ``skip_bad_files`` work as in
    :class:`VideoDataset`; skipped manifest lines and files are logged and counted
    (:attr:`num_skipped`), and a batch whose items were all skipped arrives as None.
    """

    key = "video"
    suffixes = VIDEO_SUFFIXES
    media = "videos"
    corpus = "moving-digits corpus"
    collate = staticmethod(collate_videos)

    def __init__(
        self,
        *,
        path: str,
        channels: int = 3,
        frame_size: int | None = None,
        resize: bool = False,
        num_frames: int | None = 16,
        batch_size: int = 16,
        valid_batch_size: int = 8,
        num_workers: int = 0,
        skip_bad_files: bool = False,
        build_embedded: bool = False,
        num_clips: int = 2000,
        max_digits: int = 2,
        video_format: str = "mp4",
        seed: int = 0,
        max_valid_items: int | None = 64,
    ) -> None:
        super().__init__(path=path, batch_size=batch_size, valid_batch_size=valid_batch_size, num_workers=num_workers,
                         skip_bad_files=skip_bad_files, build_embedded=build_embedded, seed=seed,
                         max_valid_items=max_valid_items)
        self.save_hyperparameters()
        self.channels = channels
        self.frame_size = frame_size
        self.resize = resize
        self.num_frames = num_frames
        self.num_clips = num_clips
        self.max_digits = max_digits
        self.video_format = video_format

    def batch_measures(self, batch: dict) -> dict[str, float]:
        """Clips and frames (valid frames, padding left out)."""
        return {"samples": len(batch["lengths"]), "frames": float(batch["lengths"].sum())}

    def make_dataset(self, split: str, entries: list[dict]) -> VideoDataset:
        return VideoDataset(entries, channels=self.channels, frame_size=self.frame_size, resize=self.resize,
                            num_frames=self.num_frames if split == "train" else None,
                            skip_bad_files=self.skip_bad_files)

    def build_corpus(self) -> None:
        build_moving_digits(self.path, num_clips=self.num_clips, seed=self.seed, frame_size=self.frame_size or 64,
                            max_digits=self.max_digits, video_format=self.video_format)


def digit_crops(frames: torch.Tensor, positions: list[list[int]] | torch.Tensor, *, digit_size: int = 28,
                out_size: int = 32) -> torch.Tensor:
    """The digit of each frame cut out at its known top-left corner: frames [F, C, H, W] and positions
    [F] of (x, y) (a clip's manifest ``positions`` for one digit) -> [F, C, out_size, out_size], the
    ``digit_size`` square centred on black, as the digits corpus pads 28 -> 32 (what the digit judge reads)."""
    positions = torch.as_tensor(positions, dtype=torch.long)
    if positions.shape != (frames.shape[0], 2):
        raise ValueError(f"digit_crops: positions must be [F={frames.shape[0]}, 2], got {tuple(positions.shape)}")
    margin = (out_size - digit_size) // 2
    crops = frames.new_zeros(frames.shape[0], frames.shape[1], out_size, out_size)
    for i, (x, y) in enumerate(positions.tolist()):
        window = frames[i, :, y:y + digit_size, x:x + digit_size]
        crops[i, :, margin:margin + digit_size, margin:margin + digit_size] = window
    return crops


def corpus_digit_size(folder: str | Path) -> int | None:
    """The side of the digits a moving-digits build in ``folder`` drew (from its ``corpus.json``), or
    None for a folder that is not one."""
    import json

    info = Path(folder) / "corpus.json"
    if not info.is_file():
        return None
    source = json.loads(info.read_text()).get("source")
    return int(load_digit_source(source)[0].shape[-1]) if source else None
