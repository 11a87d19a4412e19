"""litdata shards of media corpora and token caches: `mmtok shard` writes them, every data module reads
them in place of a manifest with the manifest path's batches (validation and test in the same order, a
training epoch over the same items), and nothing is unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import cli_error, tiny_moving_digits
from mmtok.cli import main
from mmtok.data.audio import AudioDataModule
from mmtok.data.images import ImageDataModule
from mmtok.data.shards import write_shards
from mmtok.data.tokens import TokenDataModule
from mmtok.data.video import VideoDataModule
from mmtok.errors import DataError


def _same_batches(first: list[dict], second: list[dict], key: str) -> bool:
    return len(first) == len(second) and all(
        torch.equal(a[key], b[key]) and a.get("text") == b.get("text") for a, b in zip(first, second))


def _names(batches: list[dict]) -> list[str]:
    return sorted(Path(path).name for batch in batches for path in batch["path"])


def test_audio_shards_give_the_manifest_batches(tiny_corpus, tmp_path, capsys):
    main(["shard", str(tiny_corpus), str(tmp_path / "shards")])
    assert "shards written to" in capsys.readouterr().out
    info = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert info["kind"] == "media" and info["key"] == "audio" and sum(info["counts"].values()) == 24
    modules = [AudioDataModule(path=str(path), batch_size=4, crop_seconds=0.25, max_valid_items=None)
               for path in (tiny_corpus, tmp_path / "shards")]
    for module in modules:
        module.setup()
    manifest, shards = modules
    for loader in ("val_dataloader", "test_dataloader"):
        assert _same_batches(list(getattr(manifest, loader)()), list(getattr(shards, loader)()), "audio"), loader
    loader = shards.train_dataloader()
    epoch = list(loader)
    assert all(batch["audio"].shape == (4, 1, 4000) for batch in epoch), "equal batches of 0.25 s crops"
    everything = _names(list(manifest.train_dataloader()))
    assert set(_names(epoch)) <= set(everything) and len(_names(epoch)) == 4 * (len(everything) // 4)
    assert len(set(_names(epoch))) == len(_names(epoch)), "an epoch is each item at most once"
    again = AudioDataModule(path=str(tmp_path / "shards"), batch_size=4, crop_seconds=0.25)
    again.setup()
    assert _same_batches(epoch, list(again.train_dataloader()), "audio"), "the order and crops come from the seed"
    assert [batch["path"] for batch in list(loader)] != [batch["path"] for batch in epoch], "each epoch its own order"


def test_image_video_and_token_shards_give_the_manifest_batches(digits16, tiny_tokens, tmp_path):
    clips, _ = tiny_moving_digits(tmp_path)
    cases = [(digits16, lambda path: ImageDataModule(path=str(path), channels=1, image_size=16, batch_size=8), "image"),
             (clips, lambda path: VideoDataModule(path=str(path), channels=1, frame_size=32, num_frames=5,
                                                  batch_size=4, build_embedded=False), "video"),
             (tiny_tokens, lambda path: TokenDataModule(tokens=str(path), batch_size=4), "codes")]
    for number, (source, make, key) in enumerate(cases):
        write_shards(source, tmp_path / f"shards{number}")
        manifest, shards = make(source), make(tmp_path / f"shards{number}")
        manifest.setup()
        shards.setup()
        assert _same_batches(list(manifest.val_dataloader()), list(shards.val_dataloader()), key), key
        batch = next(iter(shards.train_dataloader()))
        assert batch.keys() == next(iter(manifest.train_dataloader())).keys(), key


def test_a_shard_index_naming_pickle_is_refused(tiny_corpus, tmp_path, capsys):
    write_shards(tiny_corpus, tmp_path / "shards")
    index = tmp_path / "shards" / "train" / "index.json"
    content = json.loads(index.read_text())
    content["config"]["data_format"][1] = "pickle"
    index.write_text(json.dumps(content))
    module = AudioDataModule(path=str(tmp_path / "shards"), batch_size=4)
    with pytest.raises(DataError, match="pickle.*never unpickles"):
        module.setup()
    code, line = cli_error(["shard", str(tmp_path / "missing"), str(tmp_path / "out")], capsys)
    assert code == 1 and "missing: no such corpus folder" in line
    with pytest.raises(ValueError, match="no voice prompts"):
        TokenDataModule(tokens=str(tmp_path / "shards"), prompt_seconds=1.0)
    with pytest.raises(ValueError, match="no crops of other items"):
        TokenDataModule(tokens=str(tmp_path / "shards"), crops_per_item=1, crop_frames=4)
