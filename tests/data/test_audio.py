import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from mmtok.data.audio import (
    AudioDataModule,
    AudioDataset,
    AudioFileError,
    collate_audio,
    assign_splits,
    load_audio,
)
from mmtok.data.manifest import read_manifest


def _sine(freq: float, *, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def _write(path: Path, data: np.ndarray, *, sample_rate: int = 16000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sample_rate, subtype=subtype)
    return path


def test_load_resamples_stereo_44k_to_mono_16k(tmp_path):
    left = _sine(440.0, seconds=1.0, sample_rate=44100, amplitude=0.6)
    right = _sine(440.0, seconds=1.0, sample_rate=44100, amplitude=0.2)
    stereo = np.stack([left, right], axis=1)  # [N, 2]
    path = _write(tmp_path / "stereo.wav", stereo, sample_rate=44100, subtype="FLOAT")
    audio = load_audio(path, sample_rate=16000)
    assert audio.dtype == torch.float32 and audio.shape == (1, 16000)
    spectrum = torch.fft.rfft(audio[0]).abs()  # 1 Hz per bin over one second
    assert int(spectrum.argmax()) == 440
    # the mono mix is the channel mean: amplitude (0.6 + 0.2) / 2
    assert float(audio[0, 1000:-1000].abs().max()) == pytest.approx(0.4, abs=0.01)


def test_load_keeps_the_rate_it_is_asked_for(tmp_path):
    data = _sine(100.0, seconds=0.5, sample_rate=16000)
    audio = load_audio(_write(tmp_path / "a.flac", data), sample_rate=16000)
    np.testing.assert_allclose(audio[0].numpy(), data, atol=1 / 32767)


def _bad_files(folder: Path) -> dict[str, Path]:
    good = _write(folder / "good.wav", _sine(200.0, seconds=0.5, sample_rate=16000))
    truncated = folder / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = folder / "text.wav"
    text.write_text("this is not audio\n")
    return {
        "truncated": truncated,
        "truncated_header": _cut(good, folder / "header.wav", 20),
        "empty": _write(folder / "empty.wav", np.zeros(0, dtype=np.float32)),
        "nan": _write(folder / "nan.wav", np.full(100, np.nan, dtype=np.float32), subtype="FLOAT"),
        "inf": _write(folder / "inf.wav", np.array([0.0, np.inf], dtype=np.float32), subtype="FLOAT"),
        "text": text,
        "missing": folder / "missing.wav",
    }


def _cut(source: Path, target: Path, size: int) -> Path:
    target.write_bytes(source.read_bytes()[:size])
    return target


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "truncated wav"),
        ("truncated_header", "cannot decode"),
        ("empty", "0 samples"),
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("text", "cannot decode"),
        ("missing", "cannot decode"),
    ],
)
def test_bad_files_raise_naming_the_file(tmp_path, kind, message):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(AudioFileError, match=message) as caught:
        load_audio(path, sample_rate=16000)
    assert str(path) in str(caught.value)


def test_skip_mode_counts_and_returns_the_rest(tmp_path, caplog):
    bad = _bad_files(tmp_path)
    tones = [_sine(300.0 + i, seconds=0.1 * (i + 1), sample_rate=16000) for i in range(3)]
    goods = [_write(tmp_path / f"ok{i}.wav", tone) for i, tone in enumerate(tones)]
    entries = [{"audio": str(p)} for p in [goods[0], bad["empty"], goods[1], bad["text"], goods[2]]]
    dataset = AudioDataset(entries, sample_rate=16000, skip_bad_files=True)
    with caplog.at_level(logging.WARNING, logger="mmtok.data.audio"):
        batches = list(DataLoader(dataset, batch_size=2, collate_fn=collate_audio))
    assert dataset.num_skipped == 2
    assert sum(len(b["lengths"]) for b in batches) == 3
    assert [b["path"] for b in batches] == [[str(goods[0])], [str(goods[1])], [str(goods[2])]]
    assert str(bad["empty"]) in caplog.text and str(bad["text"]) in caplog.text

    strict = AudioDataset(entries, sample_rate=16000, skip_bad_files=False)
    with pytest.raises(AudioFileError, match="empty.wav"):
        strict[1]


def test_skips_in_worker_processes_are_counted(tmp_path):
    bad = _bad_files(tmp_path)
    entries = [{"audio": str(bad["empty"])}, {"audio": str(bad["nan"])}, {"audio": str(bad["missing"])}]
    dataset = AudioDataset(entries, sample_rate=16000, skip_bad_files=True)
    batches = list(DataLoader(dataset, batch_size=1, collate_fn=collate_audio, num_workers=1))
    assert batches == [None, None, None]
    assert dataset.num_skipped == 3


def _manifest(folder: Path, lines: list[str]) -> Path:
    _write(folder / "wavs" / "a.wav", _sine(200.0, seconds=0.1, sample_rate=16000))
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_manifest_resolves_paths(tmp_path):
    absolute = _write(tmp_path / "elsewhere" / "b.wav", np.zeros(10, dtype=np.float32))
    lines = [json.dumps({"audio": "wavs/a.wav", "text": "hi"}), "", json.dumps({"audio": str(absolute)})]
    entries = read_manifest(_manifest(tmp_path, lines), key="audio")
    assert entries == [
        {"audio": str((tmp_path / "wavs" / "a.wav").resolve()), "text": "hi"},
        {"audio": str(absolute.resolve())},
    ]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"audio": "wavs/a.wav"', "not valid JSON"),
        ('{"text": "no audio key"}', "'audio' key"),
        ('["wavs/a.wav"]', "'audio' key"),
        ('{"audio": "wavs/nope.wav"}', "does not exist"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"audio": "wavs/a.wav"})
    path = _manifest(tmp_path, [good, good, bad_line])
    with pytest.raises(ValueError, match=message) as caught:
        read_manifest(path, key="audio")
    assert f"{path}:3:" in str(caught.value)


def test_collate_pads_and_keeps_lengths():
    items = [
        {"audio": torch.ones(1, 3), "length": 3, "text": "a", "speaker": "s1", "path": "x"},
        None,
        {"audio": torch.full((1, 5), 2.0), "length": 5, "text": "b", "speaker": "s2", "path": "y"},
    ]
    batch = collate_audio(items)
    expected = torch.tensor([[[1.0, 1, 1, 0, 0]], [[2.0, 2, 2, 2, 2]]])
    assert torch.equal(batch["audio"], expected)
    assert batch["lengths"].dtype == torch.long and batch["lengths"].tolist() == [3, 5]
    assert batch["text"] == ["a", "b"] and batch["speaker"] == ["s1", "s2"]
    assert "phonemes" not in batch
    assert collate_audio([None, None]) is None


def test_crops_come_from_the_signal(tmp_path):
    ramp = np.linspace(-0.9, 0.9, 4000, dtype=np.float32)
    long = _write(tmp_path / "ramp.wav", ramp, subtype="FLOAT")
    short = _write(tmp_path / "short.wav", ramp[:300], subtype="FLOAT")
    dataset = AudioDataset([{"audio": str(long)}, {"audio": str(short)}], crop_samples=1000)
    starts = set()
    for seed in range(5):
        item = dataset[0, seed]  # an item key with its own seed, as EpochSampler gives
        assert torch.equal(item["audio"], dataset[0, seed]["audio"]), "the item's seed decides its crop"
        assert item["audio"].shape == (1, 1000) and item["length"] == 1000
        start = int(np.argmin(np.abs(ramp - item["audio"][0, 0].item())))
        np.testing.assert_array_equal(item["audio"][0].numpy(), ramp[start:start + 1000])
        starts.add(start)
    assert len(starts) > 1  # the window moves
    padded = dataset[1]
    assert padded["audio"].shape == (1, 1000) and padded["length"] == 300
    np.testing.assert_array_equal(padded["audio"][0, :300].numpy(), ramp[:300])
    assert not padded["audio"][0, 300:].any()


def test_datamodule_on_a_built_corpus(tmp_path):
    dm = AudioDataModule(
        path=str(tmp_path / "corpus"),
        build_embedded=True,
        num_utterances=12,
        crop_seconds=0.5,
        batch_size=4,
        valid_batch_size=8,
        max_valid_items=1,
    )
    dm.prepare_data()
    dm.setup("fit")
    rows = [json.loads(line) for line in (tmp_path / "corpus" / "manifest.jsonl").read_text().splitlines()]
    assert [len(dm.datasets[s]) for s in ("train", "valid", "test")] == [10, 1, 1]

    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (4, 1, 8000) and batch["lengths"].tolist() == [8000] * 4
    assert len(batch["phonemes"]) == 4 and len(batch["speaker"]) == 4

    valid = next(iter(dm.val_dataloader()))
    row = next(r for r in rows if r["split"] == "valid")
    assert valid["text"] == [row["text"]]
    frames = sf.info(tmp_path / "corpus" / row["audio"]).frames
    assert valid["lengths"].tolist() == [frames] and abs(frames / 16000 - row["duration"]) <= 5e-5
    assert valid["audio"].shape == (1, 1, frames)
    assert len(next(iter(dm.test_dataloader()))["text"]) == 1
    assert dm.num_skipped == 0


def test_datamodule_on_a_plain_folder(tmp_path):
    names = [f"spk{i % 3}/clip{i:02d}.wav" for i in range(8)] + ["x/loud.FLAC"]
    for i, name in enumerate(names):
        tone = _sine(200.0 + 50 * i, seconds=0.2 + 0.05 * i, sample_rate=22050)
        _write(tmp_path / name, tone, sample_rate=22050)
    (tmp_path / "notes.txt").write_text("not audio")
    dm = AudioDataModule(path=str(tmp_path), crop_seconds=None, batch_size=32)
    dm.setup()
    seen = {s: sorted(Path(e["audio"]).relative_to(tmp_path).as_posix() for e in dm.datasets[s].entries)
            for s in ("train", "valid", "test")}
    assert sorted(sum(seen.values(), [])) == sorted(names)
    assert all(seen.values())
    expected = dict(zip(sorted(names), assign_splits(sorted(names))))
    assert all(expected[name] == split for split, group in seen.items() for name in group)

    batch = next(iter(dm.train_dataloader()))
    lengths = sorted(batch["lengths"].tolist())
    assert lengths == sorted(round((0.2 + 0.05 * names.index(n)) * 16000) for n in seen["train"])
    assert batch["audio"].shape == (len(seen["train"]), 1, max(lengths))
    assert "text" not in batch


def test_assign_splits_are_stable_and_complete():
    names = [f"f{i}.wav" for i in range(2000)]
    splits = assign_splits(names)
    assert splits == assign_splits(names)
    assert 0.03 < splits.count("valid") / 2000 < 0.07 and 0.03 < splits.count("test") / 2000 < 0.07
    assert assign_splits(names[:1500]) == splits[:1500]  # adding files does not move the others
    assert assign_splits(["only.wav"]) == ["train"]
    assert sorted(assign_splits(["a.wav", "b.wav"])) == ["train", "valid"]
    assert sorted(assign_splits(["a.wav", "b.wav", "c.wav"])) == ["test", "train", "valid"]


def test_datamodule_missing_path_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        AudioDataModule(path=str(missing))
    (tmp_path / "empty").mkdir()
    dm = AudioDataModule(path=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no audio files"):
        dm.setup()


@pytest.mark.parametrize("rate", [16000, 22050, 44100, 8000])
def test_an_audio_reader_gives_the_samples_of_whole_file_loading_block_by_block(rate, tmp_path):
    from mmtok.data.audio import AudioReader

    x = (np.random.default_rng(0).standard_normal(rate * 3 + 123) * 0.1).astype(np.float32)
    sf.write(str(tmp_path / "a.wav"), x, rate, subtype="FLOAT")
    whole = load_audio(tmp_path / "a.wav", sample_rate=16000)
    reader = AudioReader(tmp_path / "a.wav", sample_rate=16000)
    assert len(reader) == whole.shape[-1]
    blocks = torch.cat([reader.read(start, start + 7001) for start in range(0, len(reader), 7001)], dim=-1)
    torch.testing.assert_close(blocks, whole, atol=1e-6, rtol=0)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioFileError, match="empty.wav: cannot decode audio"):
        AudioReader(tmp_path / "empty.wav", sample_rate=16000)
