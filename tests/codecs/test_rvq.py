import copy
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from mmtok.codecs.rvq import RVQCodec, frame_mask
from mmtok.tokens import Tokens

TINY = dict(encoder_channels=4, decoder_channels=32, latent_dim=16, codebook_size=32, num_quantizers=4)
HOP = 320


def sines(batch: int, num_samples: int, *, seed: int = 0) -> torch.Tensor:
    """Real-ish audio [B, 1, N]: two sines per item at different pitches, plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / 16000
    freqs = 110 + 440 * torch.rand(batch, 2, 1, generator=generator)
    audio = 0.3 * torch.sin(2 * math.pi * freqs * t).sum(1, keepdim=True)
    return audio + 0.02 * torch.randn(batch, 1, num_samples, generator=generator)


def tiny(**kwargs) -> RVQCodec:
    torch.manual_seed(0)
    return RVQCodec(**{**TINY, **kwargs})


@pytest.fixture(scope="module")
def codec() -> RVQCodec:
    """A tiny codec whose codebooks were k-means initialised on sines (one training forward), in eval mode."""
    model = tiny()
    model.train()
    with torch.no_grad():
        model(sines(4, 8000, seed=1))
    return model.eval()


def _latent(codec: RVQCodec, audio: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return codec.encoder(codec._pad(audio))  # [B, D, T]


# -- the tokenizer contract ----------------------------------------------------------------------

@pytest.mark.parametrize("sample_rate, strides, hop, frame_rate", [
    (16000, (2, 4, 5, 8), 320, 50.0),
    (24000, (2, 4, 5, 6), 240, 100.0),
    (8000, (2, 2), 4, 2000.0),
])
def test_contract_facts(sample_rate, strides, hop, frame_rate):
    codec = tiny(sample_rate=sample_rate, strides=strides, num_quantizers=3, codebook_size=16)
    assert codec.codebook_sizes == [16, 16, 16] and codec.num_codebooks == 3
    assert codec.hop_length == hop and codec.sample_rate == sample_rate
    assert codec.frame_rate == frame_rate == sample_rate / hop


def test_default_codec_is_4_kbps_at_50_hz():
    codec = RVQCodec(encoder_channels=4, decoder_channels=32, latent_dim=16)
    assert codec.frame_rate == 16000 / 320 == 50.0
    bits = sum(math.log2(v) for v in codec.codebook_sizes) * codec.frame_rate
    assert codec.codebook_sizes == [1024] * 8 and bits == 4000


def test_frame_mask_values():
    mask = frame_mask(torch.tensor([641, 640, 1, 0]), 700, HOP, 4, torch.device("cpu"))
    assert mask.tolist() == [[True, True, True], [True, True, False], [True, False, False], [False] * 3]
    assert frame_mask(None, 641, HOP, 2, torch.device("cpu")).tolist() == [[True] * 3] * 2


# -- encode / decode -----------------------------------------------------------------------------

@pytest.mark.parametrize("num_samples", [HOP * 3 + 1, 1000, 2053, HOP * 5])
def test_decode_encode_has_input_shape(codec, num_samples):
    audio = sines(2, num_samples)
    tokens = codec.encode(audio)
    frames = math.ceil(num_samples / HOP)
    assert tokens.codes.shape == (2, 4, frames) and tokens.lengths is None
    assert tokens.media_lengths.tolist() == [num_samples] * 2
    assert (tokens.frame_rate, tokens.sample_rate) == (50.0, 16000)
    assert 0 <= int(tokens.codes.min()) and int(tokens.codes.max()) < 32
    decoded = codec.decode(tokens)
    assert decoded.shape == audio.shape
    with torch.no_grad():  # reference: the decoder on the summed codewords, cut to the input length
        reference = codec.decoder(codec.dequantize(tokens.codes))[..., :num_samples]
    assert torch.equal(decoded, reference)
    assert decoded.abs().max() > 0 and decoded.abs().max() <= 1  # tanh output


def test_lengths_give_frame_counts_and_zero_tails(codec):
    lengths = torch.tensor([2053, 1000, 320])
    audio = sines(3, 2053)
    tokens = codec.encode(audio, lengths)
    assert tokens.lengths.tolist() == [math.ceil(n / HOP) for n in lengths.tolist()] == [7, 4, 1]
    assert torch.equal(tokens.media_lengths, lengths)
    for item, frames in enumerate(tokens.lengths.tolist()):
        valid = tokens.codes[item, :, :frames]
        assert 0 <= int(valid.min()) and int(valid.max()) < 32
    decoded = codec.decode(tokens)
    assert decoded.shape == (3, 1, 2053)
    for item, length in enumerate(lengths.tolist()):
        assert torch.all(decoded[item, :, length:] == 0), f"item {item} has samples past its length {length}"
        assert decoded[item, :, :length].abs().max() > 0


def test_decode_of_one_item_restores_its_length(codec):
    tokens = codec.encode(sines(2, 2053), torch.tensor([2053, 700]))
    item = tokens[1]
    assert torch.equal(item.codes, tokens.codes[1:, :, :3]) and item.media_lengths.tolist() == [700]
    decoded = codec.decode(item)
    assert decoded.shape == (1, 1, 700)
    with torch.no_grad():
        assert torch.equal(decoded, codec.decoder(codec.dequantize(item.codes))[..., :700])


def test_decode_rejects_other_sample_rate(codec):
    tokens = Tokens(codes=torch.zeros(1, 4, 2, dtype=torch.long), sample_rate=24000)
    with pytest.raises(ValueError, match="tokens of sample_rate 24000, this tokenizer's is 16000"):
        codec.decode(tokens)


def test_decode_without_media_lengths_gives_whole_frames(codec):
    codes = codec.encode(sines(1, 1000)).codes
    assert codec.decode(Tokens(codes=codes)).shape == (1, 1, 4 * HOP)


def test_encode_is_pure_in_train_mode(codec):
    model = copy.deepcopy(codec).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    audio = sines(2, 3000, seed=3)
    first, second = model.encode(audio), model.encode(audio)
    assert torch.equal(first.codes, second.codes)
    assert torch.equal(first.codes, codec.encode(audio).codes)  # same as in eval mode
    assert 0 <= int(first.codes.min()) and int(first.codes.max()) < 32
    for q, layer in enumerate(model.quantizer.layers):
        assert torch.equal(layer._codebook.embed, before[f"quantizer.layers.{q}._codebook.embed"]), q
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == []
    assert model.training and model.quantizer.training  # the train mode was restored


def test_dequantize_equals_quantizer_output(codec):
    audio = sines(2, 2053, seed=4)
    latent = _latent(codec, audio)
    with torch.no_grad():
        quantized, indices, _ = codec.quantizer(rearrange(latent, "b d t -> b t d"))
    codes = codec.encode(audio).codes
    assert torch.equal(codes, rearrange(indices, "b t q -> b q t"))
    dequantized = codec.dequantize(codes)
    assert dequantized.shape == latent.shape
    assert torch.allclose(dequantized, rearrange(quantized, "b t d -> b d t"), atol=1e-6)
    # and the codeword sum by hand
    by_hand = sum(codec.quantizer.codebooks[q][codes[:, q]] for q in range(4))  # [B, T, D]
    assert torch.allclose(dequantized, rearrange(by_hand, "b t d -> b d t"), atol=1e-6)


def test_dequantize_skips_dropped_codebooks(codec):
    codes = codec.encode(sines(2, 1500, seed=5)).codes
    dropped = codes.clone()
    dropped[:, 2:] = -1
    assert torch.equal(codec.dequantize(dropped), codec.dequantize(codes[:, :2]))
    holes = codes.clone()
    holes[:, 1] = -1
    holes[0, 3, 1] = -1
    books = codec.quantizer.codebooks
    by_hand = books[0][codes[:, 0]] + books[2][codes[:, 2]] + books[3][codes[:, 3]]
    by_hand[0, 1] -= books[3][codes[0, 3, 1]]
    assert torch.allclose(codec.dequantize(holes), rearrange(by_hand, "b t d -> b d t"), atol=1e-6)
    assert torch.equal(codec.dequantize(torch.full((1, 4, 3), -1)), torch.zeros(1, 16, 3))
    with pytest.raises(ValueError, match="5 codebooks, the model has 4"):
        codec.dequantize(torch.zeros(1, 5, 3, dtype=torch.long))


def test_num_quantizers_is_a_prefix_and_error_falls(codec):
    audio = sines(3, 4000, seed=6)
    full = codec.encode(audio).codes
    latent = _latent(codec, audio)
    errors = []
    for n in range(1, 5):
        tokens = codec.encode(audio, num_quantizers=n)
        assert torch.equal(tokens.codes, full[:, :n])
        assert codec.decode(tokens).shape == audio.shape  # fewer codebooks decode at a lower bitrate
        errors.append(float((latent - codec.dequantize(tokens.codes)).norm()))
    assert all(b <= a for a, b in zip(errors, errors[1:])), f"latent error by codebooks: {errors}"
    assert errors[-1] < 0.9 * errors[0], f"latent error by codebooks: {errors}"
    assert errors[0] < float(latent.norm()), f"one codebook {errors[0]} vs no codebook {float(latent.norm())}"


# -- training ------------------------------------------------------------------------------------

def test_forward_in_training(codec):
    model = copy.deepcopy(codec)
    model.quantizer_dropout = 0.0
    model.train()
    audio = sines(2, 2053, seed=7)
    codebooks = model.quantizer.codebooks.clone()  # [Q, V, D] before this forward's EMA update
    out = model(audio)
    assert out.audio.shape == audio.shape and out.codes.shape == (2, 4, 7) and out.latent.shape == (2, 16, 7)
    assert out.commitment_loss.dim() == 0 and out.commitment_loss.item() >= 0 and out.commitment_loss.requires_grad
    out.commitment_loss.backward()
    last_conv = model.encoder.layers[-1].parametrizations.weight.original1
    assert last_conv.grad is not None and last_conv.grad.abs().sum() > 0
    # the commitment loss is the mean squared distance of the latent to its quantization, summed over layers
    residual, expected = out.latent.detach(), 0.0
    for q in range(4):
        chosen = rearrange(codebooks[q][out.codes[:, q]], "b t d -> b d t")
        expected += float(F.mse_loss(chosen, residual))
        residual = residual - chosen
    assert out.commitment_loss.item() == pytest.approx(expected, rel=1e-4)
    assert not torch.equal(model.quantizer.codebooks, codebooks)  # training updates the EMA codebooks


def test_forward_in_eval_matches_encode_decode(codec):
    audio = sines(2, 1111, seed=8)
    with torch.no_grad():
        out = codec(audio)
    tokens = codec.encode(audio)
    assert torch.equal(out.codes, tokens.codes)
    assert torch.allclose(out.audio, codec.decode(tokens), atol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_quantizer_dropout(codec, dropout):
    model = copy.deepcopy(codec)
    model.quantizer_dropout = dropout
    model.train()
    torch.manual_seed(1)
    kept = []
    with torch.no_grad():
        for _ in range(8):
            codes = model(sines(1, 640, seed=9)).codes  # [1, 4, 2]
            dropped = codes == -1
            # dropout keeps a prefix: the first codebook always, then the same count at every step
            assert not dropped[:, 0].any()
            assert torch.equal(dropped, dropped.cummax(dim=1).values)
            assert torch.equal(dropped, dropped[:, :, :1].expand_as(dropped))
            kept.append(int((~dropped[0, :, 0]).sum()))
    if dropout == 0.0:
        assert kept == [4] * 8
    else:
        assert min(kept) < 4, f"codebooks kept per forward: {kept}"
        assert len(set(kept)) > 1, f"codebooks kept per forward: {kept}"
    # eval never drops
    model.eval()
    with torch.no_grad():
        assert (model(sines(1, 640, seed=9)).codes >= 0).all()


def test_invalid_arguments(codec):
    audio = sines(1, 640)
    for n in (0, 5):
        with pytest.raises(ValueError, match=rf"num_quantizers must be in 1\.\.4, got {n}"):
            codec.encode(audio, num_quantizers=n)
    for shape in [(1, 640), (1, 2, 640), (640,)]:
        with pytest.raises(ValueError, match=r"audio must be \[B, 1, N\]"):
            codec.encode(torch.zeros(shape))
    with pytest.raises(ValueError, match=r"audio must be \[B, 1, N\], got shape \(2, 640\)"):
        codec(torch.zeros(2, 640))
    for p in (1.5, -0.1):
        with pytest.raises(ValueError, match=rf"quantizer_dropout must be a probability in \[0, 1\], got {p}"):
            RVQCodec(**TINY, quantizer_dropout=p)


def test_learns_to_reconstruct_a_short_signal():
    """A few Adam steps on one 0.1 s signal: the loss falls, and the L1 beats predicting silence."""
    model = tiny(quantizer_dropout=0.0).train()
    audio = sines(1, 1600, seed=10)
    silence = float(audio.abs().mean())  # the L1 of an all-zero output
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    losses, l1s = [], []
    for _ in range(120):
        out = model(audio)
        l1 = F.l1_loss(out.audio, audio)
        loss = l1 + 0.1 * out.commitment_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        l1s.append(l1.item())
    first, last, last_l1 = sum(losses[:5]) / 5, sum(losses[-5:]) / 5, sum(l1s[-5:]) / 5
    assert last < 0.5 * first, f"loss went from {first:.4f} to {last:.4f}"
    assert last_l1 < 0.5 * silence, f"L1 {last_l1:.4f} vs {silence:.4f} for silence"


def test_encode_and_eval_forward_of_an_untrained_codec_change_no_buffer_and_training_initialises():
    """vector-quantize-pytorch k-means-initialises codebooks on the first call in any mode; a
    Lightning sanity check would initialise them from validation audio. Only training batches may."""
    model = tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode(sines(2, 3000, seed=11))
    with torch.no_grad():
        model(sines(2, 3000, seed=12))
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])] == []
    train = sines(4, 8000, seed=13)
    model.train()
    with torch.no_grad():
        model(train)
    first = model.quantizer.codebooks[0]
    assert first.abs().sum() > 0, "the first training batch initialises the codebooks"
    latent = _latent(model, train)
    # k-means on the training latents: every codeword lies within the span of those latents
    assert float(first.norm(dim=-1).max()) <= float(latent.norm(dim=1).max()) + 1e-4


@pytest.mark.parametrize("codes, expected", [
    (torch.full((1, 4, 3), 32), r"codebook 0 holds 32, expected 0\.\.31 or -1 \(codebook sizes \[32, 32, 32, 32\]\)"),
    (torch.full((1, 4, 3), -3), r"codebook 0 holds -3, expected 0\.\.31 or -1"),
    (torch.zeros(1, 6, 3, dtype=torch.long), "6 codebooks, this tokenizer has 4"),
    (torch.zeros(1, 4, 0, dtype=torch.long), "no steps, expected at least one"),
])
def test_tokens_the_codec_cannot_read_are_named(codec, codes, expected):
    with pytest.raises(ValueError, match=expected):
        codec.check_tokens(Tokens(codes=codes))
    if codes.shape[2]:  # decoding checks them too (an empty generated item decodes to no audio)
        with pytest.raises(ValueError, match=expected):
            codec.decode(Tokens(codes=codes))
    dropped = torch.zeros(1, 4, 3, dtype=torch.long)
    dropped[:, 2:] = -1
    codec.check_tokens(Tokens(codes=dropped))  # -1 is this codec's "dropped quantizer"
