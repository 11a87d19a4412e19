"""Video from captions: a generator over a C-ViViT's (t, h, w) tokens -> mp4, gif and a png strip.

A clip of F = 1 + k · pt frames is t = 1 + k frame groups of h · w steps; its length is chosen before
sampling (``--frames``). A clip longer than the model was trained on, or a story of several captions,
is made the way Phenaki makes them (Villegas et al. 2022, Sec. 2.3): each next segment is generated
with its own caption, **primed** with the tokens of the previous segment's last frames (re-encoded by
the causal tokenizer as the start of a new clip, so they are exactly what a clip starting there would
hold), and the primed frames are not repeated when the segments are joined.

``mmtok generate CKPT --text "the digit 3 moves left" --frames 17 --out DIR`` writes ``text<i>.mp4``,
``text<i>.gif`` and ``text<i>.png`` (the frames side by side); ``--story`` joins the captions into one
video, ``story.*``. ``--prime VIDEO`` continues a video of the user's the same way: its last frames,
encoded, prime the first segment, and the files hold the whole video followed by the new frames.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from mmtok.errors import DataError, UsageError
from mmtok.tasks.base import Task


@torch.no_grad()
def generate_clips(generator, tokenizer, captions: list[str], *, frames: int, key: str = "text",
                   primer: torch.Tensor | None = None, rng: torch.Generator | None = None, batch_size: int = 32,
                   **sampling) -> torch.Tensor:
    """Video [N, C, frames, H, W] in [0, 1] for N captions, ``batch_size`` at a time; ``primer``
    (codes [N, Q, P], whole frame groups) gives each clip's first P steps."""
    tokenizer.check_frame_count(frames, name="frames")
    steps = int(tokenizer.groups(frames)) * math.prod(tokenizer.grid[1:])
    clips = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start:start + batch_size]
        given = None if primer is None else primer[start:start + batch_size]
        tokens = generator.generate({key: chunk}, lengths=torch.full((len(chunk),), steps), rng=rng, primer=given,
                                    **sampling)
        clips.append(tokenizer.decode(tokens).cpu())
    return torch.cat(clips)


@torch.no_grad()
def generate_story(generator, tokenizer, segments: list[list[str]], *, frames: int, prime_frames: int,
                   key: str = "text", primer: torch.Tensor | None = None, rng: torch.Generator | None = None,
                   batch_size: int = 32, **sampling) -> torch.Tensor:
    """Video [N, C, F, H, W] of len(segments) segments of ``frames`` frames each, F = frames +
    (segments - 1) · (frames - prime_frames): ``segments[j]`` holds the N captions of segment j; every
    segment after the first is primed with the tokens of the previous one's last ``prime_frames``
    frames (re-encoded), which it keeps, so they are written once. ``primer`` (codes [N, Q, P] of
    ``prime_frames`` frames) primes the first segment too: the video then starts with its frames."""
    if len(segments) > 1 or primer is not None:
        tokenizer.check_frame_count(prime_frames, name="prime_frames")
        if not 1 <= prime_frames < frames:
            raise UsageError(f"--prime-frames {prime_frames}: must be at least 1 and fewer than --frames {frames}")
    video = None
    for captions in segments:
        clip = generate_clips(generator, tokenizer, captions, frames=frames, key=key, primer=primer, rng=rng,
                              batch_size=batch_size, **sampling)
        video = clip if video is None else torch.cat([video, clip[:, :, prime_frames:]], dim=2)
        device = next(tokenizer.parameters()).device
        primer = encode_primer(generator, tokenizer, clip[:, :, -prime_frames:].to(device))
    return video


@torch.no_grad()
def encode_primer(generator, tokenizer, frames: torch.Tensor) -> torch.Tensor:
    """Frames [N, C, P, H, W] -> the codes [N, Q, steps] that prime a clip starting with them (the causal
    tokenizer codes them exactly as the start of a clip), the generator's Q codebooks."""
    return tokenizer.encode(frames).codes[:, : generator.num_codebooks]


def read_prime_video(tokenizer, path: str | Path, prime_frames: int) -> torch.Tensor:
    """``--prime``: a video file -> [C, F, H, W] in [0, 1], checked against the tokenizer's frames."""
    from mmtok.media import read_video

    try:
        video = read_video(path, channels=tokenizer.channels)[0]
    except DataError as error:
        raise UsageError(f"--prime {error}") from None
    size = tuple(video.shape[-2:])
    if size != tuple(tokenizer.frame_size):
        raise UsageError(f"--prime {path}: frames of {size[0]}x{size[1]} pixels (H x W); this tokenizer reads "
                         f"{tokenizer.frame_size[0]}x{tokenizer.frame_size[1]}")
    if video.shape[1] < prime_frames:
        raise UsageError(f"--prime {path}: {video.shape[1]} frame(s), fewer than the {prime_frames} that prime "
                         f"the continuation (--prime-frames)")
    return video


def frame_strip(video: torch.Tensor) -> torch.Tensor:
    """[C, F, H, W] -> the frames side by side, [C, H, F · W]."""
    return video.permute(0, 2, 1, 3).flatten(2)


class TextToVideo(Task):
    """Captions -> clips (``text<i>``) or one story (``story``), each as mp4, gif and a png strip.

    ``longest`` is the most frames the generator was trained on (its recipe's crop): a longer
    ``--frames`` is made by priming segments of ``longest`` frames, as a story of one caption is.
    ``prime_frames`` is how many of a segment's last frames prime the next (1 + k · pt).
    """

    def __init__(self, *, key: str = "text", longest: int = 17, prime_frames: int = 5):
        super().__init__(key=key, longest=longest, prime_frames=prime_frames)
        self.key, self.longest, self.prime_frames = key, longest, prime_frames

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--text", action="append", default=[], help="a caption (repeatable)")
        parser.add_argument("--frames", type=int, default=17, help="frames per clip (1 + k·pt; default 17)")
        parser.add_argument("--story", action="store_true",
                            help="one video: a segment of --frames frames per caption, each primed on the last")
        parser.add_argument("--prime-frames", type=int, default=None,
                            help="frames of a segment that prime the next (default: the generator's recorded value)")
        parser.add_argument("--prime", default=None, metavar="VIDEO",
                            help="continue this video (mp4, gif, npz ...): its last --prime-frames frames prime the "
                                 "first segment; --frames counts from the first of them, and the files hold the "
                                 "whole video, then the new frames")
        parser.add_argument("--num-samples", type=int, default=1, help="clips per caption (or stories)")
        parser.add_argument("--batch-size", type=int, default=32, help="clips generated together")

    def _check(self, generator, tokenizer, args) -> int:
        empty = next((text for text in args.text if not text.strip()), None)
        if empty is not None or not args.text:
            raise UsageError(f"--text{'' if empty is None else ' ' + repr(empty)}: give one or more non-empty captions")
        if self.key not in generator.conditioner.keys:
            raise UsageError(f"{generator.tokenizer_id}: this generator has no {self.key!r} condition (it has "
                             f"{generator.conditioner.keys})")
        for name, value in (("--num-samples", args.num_samples), ("--batch-size", args.batch_size)):
            if value < 1:
                raise UsageError(f"{name} {value}: must be ≥ 1")
        try:
            tokenizer.check_frame_count(args.frames, name="--frames")
        except DataError as error:
            raise UsageError(str(error)) from None
        prime = args.prime_frames or self.prime_frames
        try:
            tokenizer.check_frame_count(prime, name="--prime-frames")
        except DataError as error:
            raise UsageError(str(error)) from None
        segment = min(args.frames, self.longest)
        if (args.story or args.prime or args.frames > self.longest) and not 1 <= prime < segment:
            raise UsageError(f"--prime-frames {prime}: must be fewer than the segment's frames {segment}")
        return prime

    def make(self, generator, tokenizer, captions: list[list[str]], *, frames: int, prime_frames: int,
             rng, batch_size: int, primer: torch.Tensor | None = None, **sampling) -> torch.Tensor:
        """Video [N, C, F, H, W]: ``captions[j]`` the N captions of segment j. One segment of at most
        ``longest`` frames is one clip; more frames than that are made of primed segments of
        ``longest`` frames (the last caption repeated), cut to ``frames`` when there is only one segment.
        ``primer`` (codes of ``prime_frames`` frames) primes the first segment, whose frames it starts."""
        segment = min(frames, self.longest)
        wanted = frames if len(captions) == 1 else segment + (len(captions) - 1) * (segment - prime_frames)
        while segment + (len(captions) - 1) * (segment - prime_frames) < wanted:
            captions = captions + [captions[-1]]
        video = generate_story(generator, tokenizer, captions, frames=segment, prime_frames=prime_frames,
                               key=self.key, primer=primer, rng=rng, batch_size=batch_size, **sampling)
        return video[:, :, :wanted]

    def run(self, generator, tokenizer, args, *, out, rng, sampling) -> list[Path]:
        from mmtok.media import write_png, write_video

        prime = self._check(generator, tokenizer, args)
        texts = list(args.text)
        if args.story:
            segments = [[text] * args.num_samples for text in texts]
            names = ["story" if args.num_samples == 1 else f"story_{i:03d}" for i in range(args.num_samples)]
        else:
            segments = [[text for text in texts for _ in range(args.num_samples)]]
            names = [f"text{i}" if args.num_samples == 1 else f"text{i}_{j:03d}"
                     for i in range(len(texts)) for j in range(args.num_samples)]
        primer = given = None
        if args.prime:
            given = read_prime_video(tokenizer, args.prime, prime)
            device = next(tokenizer.parameters()).device
            primer = encode_primer(generator, tokenizer, given[None, :, -prime:].to(device))
            primer = primer.repeat(len(segments[0]), 1, 1)
        video = self.make(generator, tokenizer, segments, frames=args.frames, prime_frames=prime, rng=rng,
                          batch_size=args.batch_size, primer=primer, **sampling)
        if given is not None:  # the user's own frames, then the new ones
            video = torch.cat([given[None].expand(len(video), -1, -1, -1, -1), video[:, :, prime:]], dim=2)
        files = []
        for name, clip in zip(names, video):
            for suffix in (".mp4", ".gif"):
                files.append(write_video(out / f"{name}{suffix}", clip, fps=tokenizer.fps))
            files.append(write_png(out / f"{name}.png", frame_strip(clip)))
        requests = ([{"name": "story", "text": texts, "frames": video.shape[2]}] if args.story else
                    [{"name": name, "text": texts[i // args.num_samples], "frames": video.shape[2]}
                     for i, name in enumerate(names)])
        if given is not None:
            requests = [{**request, "prime": str(args.prime), "given_frames": given.shape[1]}
                        for request in requests]
        (out / "requests.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests))
        print(f"{len(names)} video(s) of {video.shape[2]} frames at {tokenizer.fps:g} fps (mp4, gif, png strip)")
        return files + [out / "requests.jsonl"]

    def evaluate(self, generator, tokenizer, judge, data: str | Path, *, samples_per_request: int = 1,
                 rng: torch.Generator | None = None, max_items: int | None = None, batch_size: int = 32,
                 split: str = "test", **sampling) -> list[dict]:
        """The three rates of the Phenaki issue on the ``data`` corpus' ``split`` clips (one clip generated
        per caption, at the clip's own frame count up to ``longest``): (a) the digit the caption
        names is the one the judge reads (majority over frames, on crops at each frame's centre of
        mass), (b) the motion over the first three frames follows the caption's direction, (c) the clip
        has the frames asked for. Next to them the floor (the real clips) and the tokenizer's
        ceiling (its reconstructions of them), with the generation time."""
        import time

        from mmtok.data.manifest import read_manifest
        from mmtok.data.video import corpus_digit_size
        from mmtok.media import read_video

        entries = [e for e in read_manifest(data, key="video") if e.get("split") == split
                   and len(e.get("digits", ())) == 1][:max_items]
        if not entries:
            raise DataError(f"{data}: no one-digit {split} clips to evaluate on")
        digit_size = corpus_digit_size(Path(data) if Path(data).is_dir() else Path(data).parent) or 28
        counts = [min(int(tokenizer.usable_frames(torch.tensor(e["num_frames"]))), self.longest) for e in entries]
        real = [read_video(e["video"], channels=tokenizer.channels)[0][:, :n] for e, n in zip(entries, counts)]
        device = next(tokenizer.parameters()).device
        recon = [tokenizer.decode(tokenizer.encode(clip[None].to(device)).first_codebooks(
            generator.num_codebooks))[0].cpu() for clip in real]
        digits = [int(e["digits"][0]) for e in entries]
        directions = [e["directions"][0] for e in entries]
        rows = [{"clips": f"real {split} clips (floor)",
                 **clip_rates(real, digits, directions, counts, judge, digit_size)},
                {"clips": "tokenizer reconstructions (ceiling)",
                 **clip_rates(recon, digits, directions, counts, judge, digit_size)}]
        generated, seconds = [], 0.0
        for count in sorted(set(counts)):  # one batch shape per frame count
            chosen = [i for i, n in enumerate(counts) if n == count]
            started = time.perf_counter()
            clips = generate_clips(generator, tokenizer, [entries[i]["text"] for i in chosen], frames=count,
                                   key=self.key, rng=rng, batch_size=batch_size, **sampling)
            seconds += time.perf_counter() - started
            generated += list(zip(chosen, clips))
        clips = [clip for _, clip in sorted(generated, key=lambda pair: pair[0])]
        rows.append({"clips": f"generated ({generator.check_sampler(sampling.get('sampler'))}, "
                              f"{sampling.get('steps', 16)} steps)",
                     **clip_rates(clips, digits, directions, counts, judge, digit_size),
                     "seconds": seconds, "frames_per_s": sum(counts) / seconds})
        return rows


# -- what the judge reads in a clip -----------------------------------------------------------------
def centre_of_mass(frames: torch.Tensor) -> torch.Tensor:
    """frames [F, C, H, W] -> each frame's intensity-weighted centre (x, y) in pixels, [F, 2]
    (the frame's centre for a black frame)."""
    gray = frames.float().mean(1)  # [F, H, W]
    height, width = gray.shape[-2:]
    mass = gray.sum((1, 2)).clamp(min=1e-6)
    ys = torch.arange(height, dtype=gray.dtype)
    xs = torch.arange(width, dtype=gray.dtype)
    x = (gray.sum(1) * xs).sum(1) / mass
    y = (gray.sum(2) * ys).sum(1) / mass
    empty = gray.sum((1, 2)) < 1e-6
    x[empty], y[empty] = (width - 1) / 2, (height - 1) / 2
    return torch.stack([x, y], 1)


def moved_towards(centres: torch.Tensor, direction: str, *, frames: int = 3, threshold: float = 1.0) -> bool:
    """Whether the centre moved towards ``direction`` (a moving-digits name: left, up-right, ...) over
    the first ``frames`` frames (a digit moves 1-3 pixels a frame and bounces off a wall within a few
    frames in a 48-pixel frame, so the start of the motion is what the caption's direction names):
    each axis the direction names moved at least ``threshold`` pixels its way, the other axis less."""
    from mmtok.data.video import DIRECTIONS

    last = min(frames, centres.shape[0]) - 1
    if last < 1:
        return False
    dx, dy = (centres[last] - centres[0]).tolist()
    wanted = DIRECTIONS[direction]
    for moved, sign in ((dx, wanted[0]), (dy, wanted[1])):
        if sign == 0 and abs(moved) >= max(threshold, 0.5 * max(abs(dx), abs(dy))):
            return False
        if sign != 0 and moved * sign < threshold:
            return False
    return True


def clip_rates(clips: list[torch.Tensor], digits: list[int], directions: list[str], frames: list[int], judge,
               digit_size: int) -> dict:
    """Rates over clips ([C, F, H, W] each): the digit read (majority of the frames' crops at their
    centres of mass), the direction followed, the frame count asked for; the per-frame accuracy, the
    accuracy on the first frames alone (the frame C-ViViT codes on its own, before the tubelets), and
    ``kept_accuracy``: the accuracy on the later frames of the clips whose first frame reads right, whether
    the tubelets keep the digit the first frame drew (a generator can draw the first frame right and lose
    the digit after it)."""
    from mmtok.data.video import digit_crops

    digit_hits = direction_hits = frame_hits = frame_correct = frame_total = first_correct = 0
    kept_correct = kept_total = 0
    device = next(judge.parameters()).device
    for clip, digit, direction, count in zip(clips, digits, directions, frames):
        video = clip.transpose(0, 1)  # [F, C, H, W]
        centres = centre_of_mass(video)
        limit = video.shape[-1] - digit_size
        corners = (centres - (digit_size - 1) / 2).round().clamp(0, limit).long()
        with torch.no_grad():
            read = judge(digit_crops(video, corners, digit_size=digit_size).to(device)).argmax(-1).cpu()
        digit_hits += int(torch.bincount(read, minlength=10).argmax()) == digit
        frame_correct, frame_total = frame_correct + int((read == digit).sum()), frame_total + len(read)
        first_right = int(read[0]) == digit
        first_correct += first_right
        if first_right:
            kept_correct, kept_total = kept_correct + int((read[1:] == digit).sum()), kept_total + len(read) - 1
        direction_hits += moved_towards(centres, direction)
        frame_hits += video.shape[0] == count
    n = len(clips)
    return {"count": n, "digit_rate": digit_hits / n, "direction_rate": direction_hits / n,
            "frame_count_rate": frame_hits / n, "frame_accuracy": frame_correct / max(1, frame_total),
            "first_frame_accuracy": first_correct / max(1, n), "kept_accuracy": kept_correct / max(1, kept_total)}
