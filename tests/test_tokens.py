import itertools

import pytest
import torch
from safetensors.torch import save_file

from mmtok.tokens import Tokens


def _tokens() -> Tokens:
    codes = torch.arange(2 * 3 * 5).reshape(2, 3, 5)
    return Tokens(codes=codes, lengths=torch.tensor([5, 2]), frame_rate=12.5, grid=[1, 5], sample_rate=4000,
                  media_lengths=torch.tensor([1600, 517]))


@pytest.mark.parametrize("shape", [(3, 5), (1, 2, 3, 5)])
def test_codes_must_be_three_dimensional(shape):
    with pytest.raises(ValueError, match=r"\[B, Q, T\].*" + r"\(" + ", ".join(map(str, shape))):
        Tokens(codes=torch.zeros(shape, dtype=torch.long))


def test_codes_must_be_long():
    with pytest.raises(ValueError, match="torch.long, got torch.int32"):
        Tokens(codes=torch.zeros(1, 2, 3, dtype=torch.int32))


def test_lengths_must_be_one_per_item():
    with pytest.raises(ValueError, match=r"\[B\]=2, got \(3,\)"):
        Tokens(codes=torch.zeros(2, 1, 4, dtype=torch.long), lengths=torch.tensor([4, 4, 4]))
    with pytest.raises(ValueError, match=r"\[B\]=2, got \(2, 1\)"):
        Tokens(codes=torch.zeros(2, 1, 4, dtype=torch.long), lengths=torch.tensor([[4], [4]]))


def test_lengths_cannot_exceed_steps():
    with pytest.raises(ValueError, match=r"exceed T=4: \[4, 5\]"):
        Tokens(codes=torch.zeros(2, 1, 4, dtype=torch.long), lengths=torch.tensor([4, 5]))
    # lengths equal to T are valid
    assert Tokens(codes=torch.zeros(2, 1, 4, dtype=torch.long), lengths=torch.tensor([4, 0])).num_steps == 4


def test_grid_becomes_int_tuple_and_facts():
    tokens = _tokens()
    assert tokens.grid == (1, 5) and all(type(g) is int for g in tokens.grid)
    assert (tokens.batch_size, tokens.num_codebooks, tokens.num_steps) == (2, 3, 5)


def test_first_codebooks_keeps_the_coarse_levels_and_the_metadata():
    tokens = _tokens()
    coarse = tokens.first_codebooks(2)
    assert torch.equal(coarse.codes, tokens.codes[:, :2]) and torch.equal(coarse.lengths, tokens.lengths)
    assert (coarse.grid, coarse.frame_rate, coarse.sample_rate) == (tokens.grid, tokens.frame_rate, tokens.sample_rate)
    for count in (0, 4):
        with pytest.raises(ValueError, match="3 codebooks"):
            tokens.first_codebooks(count)


def _assert_equal(a: Tokens, b: Tokens) -> None:
    assert torch.equal(a.codes, b.codes) and a.codes.dtype == b.codes.dtype == torch.long
    for name in ("lengths", "media_lengths"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name
    assert (a.frame_rate, a.grid, a.sample_rate) == (b.frame_rate, b.grid, b.sample_rate)


def test_save_load_round_trip(tmp_path):
    tokens = _tokens()
    path = tmp_path / "tokens.safetensors"
    tokens.save(path)
    loaded = Tokens.load(path)
    _assert_equal(loaded, tokens)
    assert loaded.grid == (1, 5) and loaded.frame_rate == 12.5 and loaded.sample_rate == 4000
    assert loaded.media_lengths.tolist() == [1600, 517]


def test_save_load_round_trip_without_optional_fields(tmp_path):
    tokens = Tokens(codes=torch.tensor([[[7, -1, 3]]]))
    tokens.save(tmp_path / "t.safetensors")
    loaded = Tokens.load(str(tmp_path / "t.safetensors"))
    _assert_equal(loaded, tokens)
    assert loaded.lengths is None and loaded.media_lengths is None and loaded.grid is None
    assert loaded.codes.tolist() == [[[7, -1, 3]]]


def test_save_writes_non_contiguous_codes(tmp_path):
    codes = torch.arange(24).reshape(2, 4, 3).transpose(1, 2)  # [2, 3, 4], not contiguous
    Tokens(codes=codes).save(tmp_path / "t.safetensors")
    assert torch.equal(Tokens.load(tmp_path / "t.safetensors").codes, codes)


def test_load_rejects_other_safetensors_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"codes": torch.zeros(1, 1, 2, dtype=torch.long)}, str(path))  # no mmtok metadata
    with pytest.raises(ValueError, match="weights.safetensors: not written by Tokens.save"):
        Tokens.load(path)
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"mmtok_tokens": "{}"})  # no codes
    with pytest.raises(ValueError, match="weights.safetensors: not written by Tokens.save"):
        Tokens.load(path)


def test_load_rejects_garbage_file(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
    with pytest.raises(ValueError) as info:
        Tokens.load(path)
    assert str(path) in str(info.value) and "not a tokens .safetensors file" in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Tokens.load(tmp_path / "missing.safetensors")


def test_getitem_trims_to_item_length():
    tokens = _tokens()
    first, second = tokens[0], tokens[1]
    assert torch.equal(first.codes, tokens.codes[:1])
    assert torch.equal(second.codes, tokens.codes[1:, :, :2])
    assert second.codes.tolist() == [[[15, 16], [20, 21], [25, 26]]]
    assert second.lengths is None and second.media_lengths.tolist() == [517]
    assert (second.frame_rate, second.grid, second.sample_rate) == (12.5, (1, 5), 4000)
    assert torch.equal(tokens[-1].codes, second.codes)


def test_getitem_without_lengths_and_out_of_range():
    tokens = Tokens(codes=torch.arange(12).reshape(3, 1, 4))
    assert tokens[2].codes.tolist() == [[[8, 9, 10, 11]]] and tokens[2].media_lengths is None
    with pytest.raises(IndexError):
        tokens[3]
    # iteration stops at the batch size (bounded, so that a regression fails instead of looping forever)
    assert [t.codes[0, 0, 0].item() for t in itertools.islice(tokens, 5)] == [0, 4, 8]


def test_to_moves_every_tensor():
    tokens = _tokens()
    moved = tokens.to("cpu")
    _assert_equal(moved, tokens)
    assert moved.codes.device.type == moved.lengths.device.type == moved.media_lengths.device.type == "cpu"
    moved = Tokens(codes=torch.zeros(1, 1, 1, dtype=torch.long)).to(torch.device("cpu"))
    assert moved.lengths is None and moved.media_lengths is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_and_back():
    tokens = _tokens()
    moved = tokens.to("cuda")
    assert moved.codes.is_cuda and moved.lengths.is_cuda and moved.media_lengths.is_cuda
    _assert_equal(moved.to("cpu"), tokens)


def test_write_tokens_from_int16_codes_is_the_file_save_writes(tmp_path):
    """A long file's codes may be held as int16: the file is the same (int64 codes, same tensors and
    metadata, readable by safetensors), whatever the block size it is written in."""
    from safetensors.torch import load_file

    from mmtok.tokens import write_tokens

    tokens = Tokens(codes=torch.randint(-1, 1024, (1, 8, 3001)), frame_rate=50.0, sample_rate=16000,
                    media_lengths=torch.tensor([960300]))
    tokens.save(tmp_path / "long.safetensors")
    write_tokens(tmp_path / "short.safetensors", tokens.codes.to(torch.int16), media_lengths=tokens.media_lengths,
                 frame_rate=50.0, sample_rate=16000, block=1000)
    assert (tmp_path / "long.safetensors").read_bytes() == (tmp_path / "short.safetensors").read_bytes()
    raw = load_file(str(tmp_path / "short.safetensors"))
    assert raw["codes"].dtype == torch.int64 and torch.equal(raw["codes"], tokens.codes)


def test_a_tokens_file_is_read_window_by_window(tmp_path):
    from mmtok.errors import DataError
    from mmtok.tokens import TokensFile

    tokens = Tokens(codes=torch.randint(0, 1024, (1, 4, 500)), frame_rate=50.0, sample_rate=16000,
                    media_lengths=torch.tensor([160000]))
    tokens.save(tmp_path / "one.safetensors")
    with TokensFile(tmp_path / "one.safetensors") as file:
        assert (file.num_codebooks, file.num_steps, int(file.media_lengths[0])) == (4, 500, 160000)
        window = file.window(120, 333)
        assert torch.equal(window.codes, tokens.codes[..., 120:333]) and window.frame_rate == 50.0
    batch = Tokens(codes=torch.zeros(2, 4, 10, dtype=torch.long), lengths=torch.tensor([10, 5]))
    batch.save(tmp_path / "batch.safetensors")
    with pytest.raises(DataError, match="batch.safetensors: read window by window only for one item"):
        TokensFile(tmp_path / "batch.safetensors")
    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="other.safetensors: not a tokens"):
        TokensFile(tmp_path / "other.safetensors")
