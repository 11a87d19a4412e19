import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtok.cli import main
from mmtok.data import video as video_module
from mmtok.data.images import DIGIT_WORDS, digit_splits, load_digit_source
from mmtok.data.video import (
    DIRECTIONS,
    VideoDataModule,
    VideoDataset,
    bounce_trajectory,
    build_moving_digits,
    collate_videos,
)
from mmtok.media import MediaFileError, read_video, write_video

NUM = 16
LIMIT = 64 - 28


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """16 clips, exact frames (npz)."""
    out = tmp_path_factory.mktemp("moving_npz")
    build_moving_digits(out, num_clips=NUM, seed=0, video_format="npz", progress=False)
    return out


def _frames(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["frames"][..., 0]  # [T, H, W]


def test_bounce_trajectory_reflects_off_both_edges():
    positions, bounces = bounce_trajectory(start=(1, 8), velocity=(-2, 3), num_frames=6, limit=10)
    assert positions == [(1, 8), (1, 9), (3, 6), (5, 3), (7, 0), (9, 3)]
    assert bounces == 3  # x at the left edge once, y at the bottom once and at the top once
    assert bounce_trajectory(start=(4, 4), velocity=(1, 0), num_frames=3, limit=10) == ([(4, 4), (5, 4), (6, 4)], 0)
    with pytest.raises(ValueError, match="outside"):
        bounce_trajectory(start=(11, 0), velocity=(1, 1), num_frames=2, limit=10)


def _reversals(steps: np.ndarray, unit: np.ndarray) -> int:
    """How often the motion reverses along each moving axis (a 0 step is a reversal at the wall)."""
    count = 0
    for axis in np.flatnonzero(unit):
        sign = int(unit[axis])
        for step in steps[:, axis]:
            new = -sign if step == 0 else int(np.sign(step))
            count, sign = count + (new != sign), new
    return count


def test_metadata_is_consistent_with_the_trajectories(clips):
    rows = _rows(clips / "manifest.jsonl")
    assert len(rows) == NUM and [r["video"] for r in rows] == sorted(r["video"] for r in rows)
    for row in rows:
        assert 1 <= len(row["digits"]) <= 2 and len(set(row["digits"])) == len(row["digits"])
        for k, positions in enumerate(row["positions"]):
            steps = np.diff(np.array(positions), axis=0)  # [T - 1, 2]
            unit = np.array(DIRECTIONS[row["directions"][k]])
            assert row["velocities"][k] == (unit * row["speeds"][k]).tolist()
            assert steps[0].tolist() == row["velocities"][k]  # the first step is never a bounce
            assert (np.abs(steps) <= np.abs(unit) * row["speeds"][k]).all()  # no faster, no other axis
            assert _reversals(steps, unit) == row["bounces"][k]
            assert len(positions) == row["num_frames"] and np.array(positions).min() >= 0
            assert np.array(positions).max() <= LIMIT


def test_frames_hold_the_named_digits_at_their_positions(clips):
    images, labels = load_digit_source("mnist")
    for row in _rows(clips / "manifest.jsonl"):
        frames = _frames(clips / row["video"])
        assert frames.shape == (row["num_frames"], 64, 64) and frames.dtype == np.uint8
        covered = np.zeros_like(frames, dtype=bool)
        for label, index, positions in zip(row["digits"], row["source_indices"], row["positions"]):
            assert labels[index] == label  # the digit named is the digit drawn
            for t, (x, y) in enumerate(positions):
                window = frames[t, y:y + 28, x:x + 28]
                assert (window >= images[index]).all()  # drawn there (max-composited)
                covered[t, y:y + 28, x:x + 28] = True
        assert frames[~covered].max() == 0  # nothing else is drawn
        if len(row["digits"]) == 1:
            (x, y), index = row["positions"][0][0], row["source_indices"][0]
            np.testing.assert_array_equal(frames[0, y:y + 28, x:x + 28], images[index])


def _centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: frame.shape[0], : frame.shape[1]]
    weight = frame.astype(np.float64)
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def test_captions_match_metadata_and_pixels(clips):
    rows = _rows(clips / "manifest.jsonl")
    pattern = re.compile(r"the digit (\d) moves ([a-z-]+)( and bounces off the wall)?")
    for row in rows:
        parsed = pattern.findall(row["captions"][0])
        assert [int(d) for d, _, _ in parsed] == row["digits"]
        assert [direction for _, direction, _ in parsed] == row["directions"]
        assert [bool(b) for _, _, b in parsed] == [n > 0 for n in row["bounces"]]
        assert row["text"] in row["captions"] and len(row["captions"]) == 3
        for label, direction in zip(row["digits"], row["directions"]):
            assert f"a handwritten {DIGIT_WORDS[label]} moving {direction}" in row["captions"][1]
            assert f"{label} goes {direction}" in row["captions"][2]
        if len(row["digits"]) == 1:  # the pixels move the way the caption says
            frames = _frames(clips / row["video"])
            shift = _centroid(frames[1]) - _centroid(frames[0])
            np.testing.assert_allclose(shift, row["velocities"][0], atol=1e-9)
            assert (np.sign(shift) == DIRECTIONS[row["directions"][0]]).all()
    assert any(len(r["digits"]) == 1 for r in rows) and any(len(r["digits"]) == 2 for r in rows)
    assert any(max(r["bounces"]) > 0 for r in rows) and any(max(r["bounces"]) == 0 for r in rows)


def test_lengths_vary_and_splits_are_disjoint(clips):
    rows = _rows(clips / "manifest.jsonl")
    lengths = [r["num_frames"] for r in rows]
    assert len(set(lengths)) >= 6 and min(lengths) >= 5 and max(lengths) <= 33
    assert [read_video(clips / r["video"], channels=1)[0].shape[1] for r in rows[:4]] == lengths[:4]
    splits = [r["split"] for r in rows]
    assert [splits.count(s) for s in ("train", "valid", "test")] == [NUM - 2, 1, 1]
    _, labels = load_digit_source("mnist")
    digit_split = digit_splits(labels, seed=0)
    for row in rows:  # clips only use digit images of their own split
        assert {digit_split[i] for i in row["source_indices"]} == {row["split"]}


def test_same_seed_gives_identical_bytes(clips, tmp_path):
    again = build_moving_digits(tmp_path / "again", num_clips=NUM, seed=0, video_format="npz", progress=False)
    assert again.read_bytes() == (clips / "manifest.jsonl").read_bytes()
    for row in _rows(again):
        assert (tmp_path / "again" / row["video"]).read_bytes() == (clips / row["video"]).read_bytes()
    other = _rows(build_moving_digits(tmp_path / "other", num_clips=NUM, seed=1, video_format="npz", progress=False))
    assert [r["positions"] for r in other] != [r["positions"] for r in _rows(again)]


def test_mp4_build_is_deterministic_and_close_to_the_exact_frames(clips, tmp_path):
    first = build_moving_digits(tmp_path / "a", num_clips=6, seed=0, progress=False)
    junk = [np.random.bytes(1000 * (j + 1)) for j in range(200)]  # x264 once read uninitialised memory
    del junk
    second = build_moving_digits(tmp_path / "b", num_clips=6, seed=0, progress=False)
    assert first.read_bytes() == second.read_bytes()
    exact = build_moving_digits(tmp_path / "exact", num_clips=6, seed=0, video_format="npz", progress=False)
    for row, exact_row in zip(_rows(first), _rows(exact)):
        assert row["video"].endswith(".mp4") and row["captions"] == exact_row["captions"]
        assert (tmp_path / "a" / row["video"]).read_bytes() == (tmp_path / "b" / row["video"]).read_bytes()
        decoded, fps = read_video(tmp_path / "a" / row["video"], channels=1)
        reference = torch.from_numpy(_frames(tmp_path / "exact" / exact_row["video"])).float()[None] / 255
        assert fps == 10.0 and decoded.shape == reference.shape
        assert float(10 * torch.log10(1 / ((decoded - reference) ** 2).mean())) > 30


def test_cache_progress_and_cli(clips, tmp_path, monkeypatch, capsys):
    files = [clips / "manifest.jsonl", clips / "corpus.json", *sorted((clips / "clips").iterdir())]
    before = [f.stat().st_mtime_ns for f in files]

    def fail(*args, **kwargs):
        raise AssertionError("a clip was written although the corpus is cached")

    monkeypatch.setattr(video_module, "write_video", fail)
    build_moving_digits(clips, num_clips=NUM, seed=0, video_format="npz")
    assert [f.stat().st_mtime_ns for f in files] == before
    monkeypatch.undo()
    main(["data", "moving-digits", "--out", str(tmp_path / "cli"), "--num-clips", "5", "--format", "gif",
          "--max-frames", "8"])
    captured = capsys.readouterr()
    assert "moving digits" in captured.err and f"moving-digits corpus: {tmp_path / 'cli'}" in captured.out
    rows = _rows(tmp_path / "cli" / "manifest.jsonl")
    assert len(rows) == 5 and all(r["video"].endswith(".gif") and r["num_frames"] <= 8 for r in rows)
    with pytest.raises(ValueError, match="video_format must be one of"):
        build_moving_digits(tmp_path / "x", num_clips=3, video_format="avi")


def test_data_module_batches_pad_and_crop(clips):
    module = VideoDataModule(path=str(clips), channels=1, num_frames=6, batch_size=4, valid_batch_size=2)
    module.setup()
    rows = {str((clips / r["video"]).resolve()): r for r in _rows(clips / "manifest.jsonl")}
    train = next(iter(module.train_dataloader()))
    assert train["video"].shape == (4, 1, 6, 64, 64)
    assert train["lengths"].tolist() == [min(6, rows[p]["num_frames"]) for p in train["path"]]
    assert train["text"] == [rows[p]["text"] for p in train["path"]]
    whole = VideoDataset([{"video": p} for p in list(rows)[:3]], channels=3)
    test = collate_videos([whole[i] for i in range(3)])
    lengths = [rows[p]["num_frames"] for p in list(rows)[:3]]
    assert test["video"].shape == (3, 3, max(lengths), 64, 64) and test["lengths"].tolist() == lengths
    for row, length in enumerate(lengths):  # zero padding after each clip's last frame
        assert float(test["video"][row, :, length:].abs().sum()) == 0.0
        assert float(test["video"][row, :, length - 1].sum()) > 0.0


def _user_folder(root: Path) -> Path:
    square = torch.zeros(3, 6, 32, 32)
    square[:, :, 8:16, 8:16] = 1.0
    write_video(root / "a.mp4", square, fps=8)
    (root / "a.txt").write_text("a white square\n")
    write_video(root / "sub" / "b.gif", square[:1, :4], fps=5)
    write_video(root / "sub" / "c.npz", square[:, :5], fps=5)
    write_video(root / "small.mp4", square[:, :3, :16, :16], fps=8)
    return root


def test_folder_loader_reads_videos_captions_and_checks_frame_size(tmp_path):
    root = _user_folder(tmp_path / "user")
    module = VideoDataModule(path=str(root), channels=3, frame_size=32, num_frames=None)
    module.setup()
    datasets = [module.datasets[s] for s in ("train", "valid", "test")]
    assert sum(len(d) for d in datasets) == 4
    by_name = {Path(e["video"]).name: (d, i) for d in datasets for i, e in enumerate(d.entries)}
    dataset, index = by_name["a.mp4"]
    item = dataset[index]
    assert item["video"].shape == (3, 6, 32, 32) and item["text"] == "a white square" and item["length"] == 6
    dataset, index = by_name["b.gif"]
    assert dataset[index]["video"].shape == (3, 4, 32, 32) and "text" not in dataset[index]
    dataset, index = by_name["small.mp4"]
    with pytest.raises(MediaFileError, match=r"frames are 16x16 \(H x W\), expected 32x32") as error:
        dataset[index]
    assert str(error.value).startswith(str((root / "small.mp4").resolve()))
    resized = VideoDataset([{"video": str(root / "small.mp4")}], frame_size=32, resize=True)[0]
    assert resized["video"].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"small\.mp4 has \[C, H, W\] = \(3, 16, 16\) but .*a\.mp4 has \(3, 32, 32\)"):
        plain = VideoDataset([{"video": str(root / "a.mp4")}, {"video": str(root / "small.mp4")}])
        collate_videos([plain[0], plain[1]])


def test_bad_videos_and_manifest_lines_raise_or_are_counted(tmp_path, caplog):
    good = write_video(tmp_path / "good.mp4", torch.rand(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)),
                       fps=8)
    empty = tmp_path / "empty.npz"
    np.savez(empty, frames=np.zeros((0, 32, 32), np.uint8), fps=np.float64(8))
    unreadable = tmp_path / "unreadable.mp4"
    unreadable.write_bytes(good.read_bytes()[:300])
    lines = [
        json.dumps({"video": "good.mp4", "split": "train", "text": "noise"}),
        json.dumps({"video": "empty.npz", "split": "train"}),
        json.dumps({"video": "unreadable.mp4", "split": "valid"}),
        json.dumps({"video": "missing.mp4", "split": "test"}),
        '{"video": "good.mp4", "split": "test"',
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"manifest\.jsonl:4: video file .*missing\.mp4' does not exist"):
        VideoDataModule(path=str(tmp_path)).setup()
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines[:3]) + "\n")
    strict = VideoDataModule(path=str(tmp_path), num_frames=None)
    strict.setup()
    with pytest.raises(MediaFileError, match="0 frames") as error:
        strict.datasets["train"][1]
    assert str(error.value).startswith(str(empty.resolve()))
    with pytest.raises(MediaFileError, match="cannot decode video") as error:
        strict.datasets["valid"][0]
    assert str(error.value).startswith(str(unreadable.resolve()))

    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    lenient = VideoDataModule(path=str(tmp_path), num_frames=None, skip_bad_files=True, batch_size=2)
    with caplog.at_level(logging.WARNING):
        lenient.setup()
        train = list(lenient.train_dataloader())
        valid = list(lenient.val_dataloader())
    assert train[0]["video"].shape == (1, 3, 4, 32, 32) and train[0]["text"] == ["noise"]
    assert valid == [None]  # every item of the batch was skipped
    assert lenient.num_skipped == 4 and lenient.num_skipped_lines == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("skipping bad video file" in m for m in messages) == 2
    assert sum("skipping manifest line" in m for m in messages) == 2
