"""Property-based tests of everything that reads a file: random bytes, random headers, truncations,
random shapes and dtypes. Every failure is one of mmtok's named errors (mmtok.errors), never a crash
of another type, and it names the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from mmtok.data.audio import AudioReader, load_audio
from mmtok.errors import MmtokError
from mmtok.hub import load_pretrained
from mmtok.media import read_image, write_png, write_wav
from mmtok.tokens import Tokens

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def only_named_errors(load, path: Path):
    """``load(path)`` either works or raises an MmtokError that names ``path``."""
    try:
        return load(path)
    except MmtokError as error:
        assert str(path) in str(error) or str(path.parent) in str(error), str(error)
        return None


def _valid_tokens(folder: Path) -> bytes:
    Tokens(codes=torch.randint(0, 8, (2, 3, 5)), lengths=torch.tensor([5, 3]), frame_rate=50.0, grid=None,
           sample_rate=16000).save(folder / "ok.safetensors")
    return (folder / "ok.safetensors").read_bytes()


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_are_never_tokens(tmp_path, data):
    (tmp_path / "t.safetensors").write_bytes(data)
    only_named_errors(Tokens.load, tmp_path / "t.safetensors")


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10_000), flip=st.integers(min_value=0, max_value=10_000),
       value=st.integers(min_value=0, max_value=255))
def test_truncated_or_corrupted_token_files(tmp_path, cut, flip, value):
    good = _valid_tokens(tmp_path)
    corrupted = bytearray(good[: cut % (len(good) + 1)])
    if corrupted:
        corrupted[flip % len(corrupted)] = value
    (tmp_path / "t.safetensors").write_bytes(bytes(corrupted))
    loaded = only_named_errors(Tokens.load, tmp_path / "t.safetensors")
    assert loaded is None or loaded.codes.dtype == torch.long


@FUZZ
@given(shape=st.lists(st.integers(min_value=0, max_value=4), min_size=0, max_size=4),
       dtype=st.sampled_from([torch.int64, torch.int32, torch.float32, torch.uint8, torch.bool]),
       meta=st.one_of(st.none(), st.text(max_size=30), st.just('{"grid": 5}'), st.just('{"frame_rate": "fast"}'),
                      st.just("[1, 2]"), st.just('{"grid": [2, "x"]}')),
       lengths=st.one_of(st.none(), st.lists(st.integers(min_value=-3, max_value=9), max_size=4)))
def test_token_files_with_any_shape_dtype_and_metadata(tmp_path, shape, dtype, meta, lengths):
    tensors = {"codes": torch.zeros(shape, dtype=dtype)}
    if lengths is not None:
        tensors["lengths"] = torch.tensor(lengths, dtype=torch.long)
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata=None if meta is None else {"mmtok_tokens": meta})
    loaded = only_named_errors(Tokens.load, tmp_path / "t.safetensors")
    if loaded is not None:
        assert loaded.codes.dim() == 3 and loaded.codes.dtype == torch.long


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory, tiny_codec_folder) -> Path:
    return tiny_codec_folder


@FUZZ
@given(config=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                                     lambda children: st.lists(children, max_size=3)
                                     | st.dictionaries(st.text(max_size=8), children, max_size=3),
                                     max_leaves=8).map(json.dumps)),
       keep_class=st.booleans())
def test_hub_folders_with_any_config(tmp_path, hub_folder, config, keep_class):
    folder = tmp_path / "hub"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes((hub_folder / "model.safetensors").read_bytes())
    if keep_class:  # a config for the real class with random other arguments
        original = json.loads((hub_folder / "config.json").read_text())
        try:
            extra = json.loads(config)
        except json.JSONDecodeError:
            extra = {}
        config = json.dumps({**original, **(extra if isinstance(extra, dict) else {}),
                             "mmtok_class": original["mmtok_class"]})
    (folder / "config.json").write_text(config, encoding="latin-1")
    only_named_errors(load_pretrained, folder)


@FUZZ
@given(data=st.binary(max_size=600), cut=st.integers(min_value=0, max_value=600))
def test_hub_weights_that_are_random_bytes_or_truncated(tmp_path, hub_folder, data, cut):
    folder = tmp_path / "hub"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text((hub_folder / "config.json").read_text())
    weights = (hub_folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data if cut % 2 else weights[: cut * 97 % len(weights)])
    only_named_errors(load_pretrained, folder)


def _wav_bytes(folder: Path) -> bytes:
    write_wav(folder / "ok.wav", np.sin(np.arange(800) / 5.0).astype(np.float32) * 0.3, sample_rate=16000)
    return (folder / "ok.wav").read_bytes()


@FUZZ
@given(data=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=2000),
       header=st.booleans(), rate=st.integers(min_value=0, max_value=200_000))
def test_audio_loaders_on_random_bytes_headers_and_truncations(tmp_path, data, cut, header, rate):
    good = _wav_bytes(tmp_path)
    if header:  # a real header with a random sample rate and a random body
        body = bytearray(good[:44] + data)
        body[24:28] = struct.pack("<I", rate)
    else:
        body = good[: cut % (len(good) + 1)] if cut % 3 else data
    (tmp_path / "a.wav").write_bytes(bytes(body))
    for load in (lambda p: load_audio(p, sample_rate=16000), lambda p: AudioReader(p, sample_rate=16000).read(0, 99)):
        audio = only_named_errors(load, tmp_path / "a.wav")
        assert audio is None or (audio.dim() == 2 and torch.isfinite(audio).all())


@FUZZ
@given(data=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=4000),
       channels=st.sampled_from([1, 3]))
def test_image_reader_on_random_bytes_and_truncations(tmp_path, data, cut, channels):
    write_png(tmp_path / "ok.png", np.random.default_rng(0).random((3, 12, 10)))
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "a.png").write_bytes(good[: cut % (len(good) + 1)] if cut % 2 else data)
    image = only_named_errors(lambda p: read_image(p, channels=channels), tmp_path / "a.png")
    assert image is None or (image.shape[0] == channels and image.min() >= 0 and image.max() <= 1)
