import math

import pytest
import torch

from mmtok.codecs.chunked import decode_chunked, decode_chunks, encode_chunked
from mmtok.codecs.rvq import RVQCodec
from mmtok.tokens import Tokens

from conftest import REPO

SR = 16000
N_LONG = 3 * SR + 123  # ~3 s, not a multiple of the hop (320) nor of any chunk


def signal(num_samples: int, *, seed: int = 0) -> torch.Tensor:
    """[1, 1, N]: a gliding sine plus a fixed sine plus noise, so that every chunk is different."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / SR
    glide = torch.sin(2 * math.pi * (150 * t + 60 * t**2))
    audio = 0.3 * glide + 0.2 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(num_samples, generator=generator)
    return audio.view(1, 1, -1)


@pytest.fixture(scope="module")
def codec() -> RVQCodec:
    """A tiny codec in eval mode whose codebooks were k-means initialised by one training forward."""
    torch.manual_seed(0)
    model = RVQCodec(encoder_channels=4, decoder_channels=32, latent_dim=16, codebook_size=32, num_quantizers=4)
    model.train()
    with torch.no_grad():
        model(torch.cat([signal(8000, seed=s) for s in range(4)]))
    return model.eval()


@pytest.fixture(scope="module")
def long_audio() -> torch.Tensor:
    return signal(N_LONG, seed=1)


@pytest.fixture(scope="module")
def whole(codec, long_audio) -> Tokens:
    return codec.encode(long_audio)


def re_shape(shape: tuple[int, ...]) -> str:
    """The regex of a shape as messages print it: (2, 1, 640) or (640,)."""
    return r"\(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + r"\)"


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"{tuple(a.shape)} != {tuple(b.shape)}"
    return float((a == b).float().mean())


def test_encode_chunked_equals_whole_signal_encode(codec, long_audio, whole):
    tokens = encode_chunked(codec, long_audio, chunk_seconds=0.5, context_seconds=1.0)
    assert tokens.codes.shape == (1, 4, math.ceil(N_LONG / 320)) == whole.codes.shape
    agreement = _agreement(tokens.codes, whole.codes)
    assert agreement >= 0.99, f"chunked codes equal whole-signal codes at {agreement:.2%} of positions"
    assert tokens.media_lengths.tolist() == [N_LONG] and tokens.lengths is None
    assert (tokens.frame_rate, tokens.sample_rate) == (50.0, SR)
    assert len(set(whole.codes[0, 0].tolist())) > 4  # the codes vary, so the agreement means something


def test_encode_chunked_keeps_first_codebooks(codec, long_audio):
    tokens = encode_chunked(codec, long_audio[..., : SR + 77], chunk_seconds=0.5, context_seconds=1.0,
                            num_quantizers=2)
    reference = codec.encode(long_audio[..., : SR + 77]).codes[:, :2]
    assert tokens.codes.shape == (1, 2, 51)
    agreement = _agreement(tokens.codes, reference)
    assert agreement >= 0.99, f"chunked codes equal whole-signal codes at {agreement:.2%} of positions"


def test_decode_chunked_equals_whole_signal_decode(codec, whole):
    reference = codec.decode(whole)
    audio = decode_chunked(codec, whole, chunk_seconds=0.5, context_seconds=1.0)
    assert audio.shape == reference.shape == (1, 1, N_LONG)
    difference = float((audio - reference).abs().max())
    assert difference < 1e-4, f"max |chunked - whole| = {difference:.3g}"
    assert reference.abs().max() > 0.01


def test_decoding_from_a_tokens_file_window_by_window_is_decoding_the_tokens(codec, whole, tmp_path):
    from mmtok.tokens import TokensFile

    whole.save(tmp_path / "whole.safetensors")
    with TokensFile(tmp_path / "whole.safetensors") as file:
        streamed = torch.cat(list(decode_chunks(codec, file, chunk_seconds=0.3)), dim=-1)
    assert torch.equal(streamed, decode_chunked(codec, whole, chunk_seconds=0.3))


def test_chunking_without_context_differs(codec, long_audio, whole):
    """The context is what makes chunking exact: without it the chunk edges show."""
    tokens = encode_chunked(codec, long_audio, chunk_seconds=0.5, context_seconds=0.0)
    assert _agreement(tokens.codes, whole.codes) < 0.99
    reference = codec.decode(whole)
    audio = decode_chunked(codec, whole, chunk_seconds=0.5, context_seconds=0.0)
    assert audio.shape == reference.shape
    assert float((audio - reference).abs().max()) > 1e-3


def test_decode_chunked_without_media_lengths_gives_whole_frames(codec, whole):
    tokens = Tokens(codes=whole.codes[..., :60], frame_rate=whole.frame_rate, sample_rate=SR)
    audio = decode_chunked(codec, tokens, chunk_seconds=0.5, context_seconds=1.0)
    assert audio.shape == (1, 1, 60 * 320)
    assert float((audio - codec.decode(tokens)).abs().max()) < 1e-4


@pytest.mark.parametrize("chunk_seconds", [0.37, 0.5, 0.93, 10.0])
def test_unaligned_chunks_round_trip(codec, long_audio, chunk_seconds):
    audio = long_audio[..., : SR + SR // 3 + 77]  # 1.34 s: 67 frames, a partial last frame
    reference = codec.encode(audio)
    tokens = encode_chunked(codec, audio, chunk_seconds=chunk_seconds, context_seconds=1.0)
    agreement = _agreement(tokens.codes, reference.codes)
    assert agreement >= 0.99, f"chunk {chunk_seconds} s: codes agree at {agreement:.2%} of positions"
    decoded = decode_chunked(codec, tokens, chunk_seconds=chunk_seconds, context_seconds=1.0)
    assert decoded.shape == audio.shape
    difference = float((decoded - codec.decode(tokens)).abs().max())
    assert difference < 1e-4, f"chunk {chunk_seconds} s: max |chunked - whole| = {difference:.3g}"


def test_progress_bar_does_not_change_results(codec, long_audio):
    audio = long_audio[..., :SR]
    quiet = encode_chunked(codec, audio, chunk_seconds=0.3, context_seconds=0.5)
    loud = encode_chunked(codec, audio, chunk_seconds=0.3, context_seconds=0.5, progress=True)
    assert torch.equal(quiet.codes, loud.codes)


def test_wrong_shapes_are_rejected(codec, long_audio, whole):
    for shape in [(2, 1, 640), (1, 640), (1, 2, 640), (640,)]:
        with pytest.raises(ValueError, match=r"one signal \[1, 1, N\], got " + re_shape(shape)):
            encode_chunked(codec, torch.zeros(shape))
    batch = Tokens(codes=whole.codes[..., :10].repeat(2, 1, 1), sample_rate=SR)
    with pytest.raises(ValueError, match="one item, got a batch of 2"):
        decode_chunked(codec, batch)


# -- every shipped tokenizer, and X-Codec with each kind of bounded teacher -----------------------

SHIPPED = ["rvq-speech-16k", "rvq-speech-16k-baseline", "xcodec-speech-16k"]


@pytest.fixture(scope="module")
def speech(tiny_corpus) -> torch.Tensor:
    """About 20 s of real speech [1, 1, N]: corpus utterances back to back, cut off the frame grid."""
    from mmtok.data.audio import load_audio

    pieces = [load_audio(path, sample_rate=SR) for path in sorted((tiny_corpus / "wavs").glob("*.wav"))]
    return torch.cat(pieces, dim=-1)[..., : 20 * SR + 123].reshape(1, 1, -1)


def _agreements(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    assert a.shape == b.shape, f"{tuple(a.shape)} != {tuple(b.shape)}"
    return [float((a[:, q] == b[:, q]).float().mean()) for q in range(a.shape[1])]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_tokenizer_encodes_and_decodes_in_chunks_as_whole(name, speech):
    from mmtok.hub import load_pretrained

    tokenizer = load_pretrained(REPO / "checkpoints" / name).eval()
    assert tokenizer.receptive_field is not None, f"{name} must declare a bounded receptive field"
    whole = tokenizer.encode(speech)
    chunked = encode_chunked(tokenizer, speech, chunk_seconds=4.0)
    agreement = _agreements(chunked.codes, whole.codes)
    assert min(agreement) >= 0.999, f"{name}: chunked codes agree with whole-file codes at {agreement}"
    reference = tokenizer.decode(whole)
    audio = decode_chunked(tokenizer, whole, chunk_seconds=4.0)
    assert float((audio - reference).abs().max()) < 1e-3


def test_xcodec_with_a_windowed_hf_teacher_encodes_in_chunks_as_whole(hubert_folder, speech):
    from mmtok.codecs.xcodec import XCodec

    torch.manual_seed(0)
    codec = XCodec(teacher={"type": "hf", "path": str(hubert_folder), "window_seconds": 1.0}, encoder_channels=4,
                   decoder_channels=32, acoustic_dim=16, semantic_dim=16, semantic_channels=16, latent_dim=16,
                   codebook_size=32, num_quantizers=2)
    with torch.no_grad():
        codec.train()(speech[..., : 4 * SR])  # k-means initialisation
    codec.eval()
    field = codec.receptive_field
    assert field.alignment == 25 and field.encode_context >= 50
    audio = speech[..., : 8 * SR + 123]
    whole = codec.encode(audio)
    assert min(_agreements(encode_chunked(codec, audio, chunk_seconds=1.7).codes, whole.codes)) >= 0.999
    # Less context than the teacher's window changes codes near the chunk edges.
    short = encode_chunked(codec, audio, chunk_seconds=1.7, context_seconds=0.2)
    assert min(_agreements(short.codes, whole.codes)) < 0.99


def test_encoding_a_file_block_by_block_gives_the_codes_of_the_whole_signal_and_decoding_streams(codec, tmp_path):
    from mmtok.data.audio import AudioReader, load_audio
    from mmtok.media import write_wav_blocks

    write_wav_blocks(tmp_path / "a.wav", [signal(N_LONG, seed=4)[0]], sample_rate=SR)
    audio = load_audio(tmp_path / "a.wav", sample_rate=SR)[None]
    whole = codec.encode(audio)
    read = encode_chunked(codec, AudioReader(tmp_path / "a.wav", sample_rate=SR), chunk_seconds=0.5)
    assert _agreement(read.codes, whole.codes) == 1.0 and read.media_lengths.tolist() == [N_LONG]
    chunks = list(decode_chunks(codec, read, chunk_seconds=0.5))
    assert len(chunks) == 7 and sum(c.shape[-1] for c in chunks) == N_LONG
    write_wav_blocks(tmp_path / "b.wav", (c[0] for c in chunks), sample_rate=SR)
    streamed = load_audio(tmp_path / "b.wav", sample_rate=SR)[None]
    assert float((streamed - load_audio_like(codec.decode(whole))).abs().max()) < 2e-4  # 16-bit rounding


def load_audio_like(audio: torch.Tensor) -> torch.Tensor:
    """Audio as a 16-bit wav stores it."""
    return torch.round(audio.clamp(-1, 1) * 32767) / 32767
