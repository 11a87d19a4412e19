"""C-ViViT: causal time (prefix property), any valid length, batch independence, frame-count errors,
Hub round trip, `mmtok encode` / `decode` of a video file, and `mmtok fit` of the moving-digits recipe
followed by `mmtok export` with measured metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import fit_tiny_cvivit, tiny_moving_digits
from mmtok.cli import main
from mmtok.codecs.cvivit import CViViTTokenizer, evaluate_video_tokenizer, valid_frame_counts
from mmtok.errors import DataError
from mmtok.hub import load_pretrained
from mmtok.media import read_video, write_video
from mmtok.tokens import Tokens


def tiny(**kwargs) -> CViViTTokenizer:
    torch.manual_seed(0)
    args = dict(frame_size=16, channels=1, patch_size=4, temporal_patch_size=2, dim=32, num_heads=2, spatial_layers=1,
                temporal_layers=2, latent_dim=8, codebook_size=32, kmeans_init=False)
    return CViViTTokenizer(**{**args, **kwargs})


def moving_square(frames: int, *, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """[B, 1, F, 16, 16]: a bright square drifting right over a little noise (each frame differs)."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, 1, frames, 16, 16, generator=generator) * 0.1
    for f in range(frames):
        video[:, :, f, 4:9, f % 12:f % 12 + 4] = 1.0
    return video


@pytest.fixture(scope="module")
def model() -> CViViTTokenizer:
    tokenizer = tiny()
    tokenizer.train()
    with torch.no_grad():
        tokenizer(moving_square(9, batch=4))
    return tokenizer.eval()


def test_valid_frame_counts_name_the_nearest():
    assert valid_frame_counts(17, 4) == (17,) and valid_frame_counts(1, 4) == (1,)
    assert valid_frame_counts(16, 4) == (13, 17) and valid_frame_counts(0, 4) == (1,)
    with pytest.raises(DataError, match=r"8 frames.*1 \+ k·2.*nearest 7 or 9"):
        tiny().check_frame_count(8)


@pytest.mark.parametrize("frames", [1, 3, 5, 9, 17])
def test_any_valid_length_round_trips_with_its_shape(model, frames):
    video = moving_square(frames, batch=2)
    tokens = model.encode(video)
    groups = 1 + (frames - 1) // 2
    assert tokens.codes.shape == (2, 1, groups * 16) and tokens.grid == (groups, 4, 4)
    assert tokens.media_lengths.tolist() == [frames, frames] and tokens.lengths.tolist() == [groups * 16] * 2
    decoded = model.decode(tokens)
    assert decoded.shape == video.shape and 0 <= decoded.min() and decoded.max() <= 1


def test_encoding_is_causal_in_time(model):
    """The first k frame groups' codes depend on those frames only: a prefix encodes to a prefix, and
    changing a later frame changes no earlier code."""
    video = moving_square(17)
    whole = model.encode(video).codes
    for frames in (1, 3, 9):
        prefix = model.encode(video[:, :, :frames]).codes
        assert torch.equal(prefix, whole[..., : prefix.shape[-1]])
    changed = video.clone()
    changed[:, :, 12:] = torch.rand_like(changed[:, :, 12:])  # frames 12.. sit in groups 6.. (group g holds 2g-1, 2g)
    codes = model.encode(changed).codes
    assert torch.equal(codes[..., : 6 * 16], whole[..., : 6 * 16]) and not torch.equal(codes, whole)


def test_a_local_encoder_codes_each_cell_from_its_own_tubelets(tmp_path):
    """encoder_window=0: changing the pixels of one grid cell moves that cell's latents only (with the
    whole-frame encoder, other cells' latents move too); the decoder still sees the whole frame."""
    video = moving_square(5)
    changed = video.clone()
    changed[:, :, :, 12:, 12:] = 1.0  # cell (3, 3) of the 4 x 4 grid, every frame
    for window, others_move in ((0, False), (None, True)):
        model = tiny(encoder_window=window).eval()
        before, after = model._features(video), model._features(changed)  # [1, t, 16, D]
        moved = (before - after).abs().amax(dim=(0, 1, 3)) > 1e-6  # per cell
        assert moved[15] and bool(moved[:15].any()) == others_move
    local = tiny(encoder_window=0).eval()
    local.save_pretrained(tmp_path / "hub")
    loaded = load_pretrained(tmp_path / "hub")
    assert loaded.encoder_window == 0 and torch.equal(loaded.encode(changed).codes, local.encode(changed).codes)
    assert loaded.decode(loaded.encode(video)).shape == video.shape


def test_decoding_is_causal_in_time(model):
    tokens = model.encode(moving_square(9))
    whole = model.decode(tokens)
    prefix = Tokens(codes=tokens.codes[..., : 3 * 16], grid=(3, 4, 4))
    assert torch.allclose(model.decode(prefix), whole[:, :, :5], atol=1e-5)


def test_a_batch_of_mixed_lengths_codes_each_item_as_alone(model):
    video = torch.zeros(3, 1, 9, 16, 16)
    lengths = torch.tensor([9, 1, 5])
    for i, frames in enumerate(lengths.tolist()):
        video[i, :, :frames] = moving_square(frames, seed=i)[0]
    tokens = model.encode(video, lengths)
    assert tokens.lengths.tolist() == [80, 16, 48] and tokens.media_lengths.tolist() == [9, 1, 5]
    decoded = model.decode(tokens)
    for i, frames in enumerate(lengths.tolist()):
        alone = model.encode(video[i:i + 1, :, :frames])
        assert torch.equal(tokens[i].codes, alone.codes)
        assert torch.allclose(decoded[i, :, :frames], model.decode(alone)[0], atol=1e-5)
        assert not decoded[i, :, frames:].any()  # past its end: black


def test_bad_inputs_are_named(model):
    with pytest.raises(DataError, match="4 frames.*nearest 3 or 5"):
        model.encode(moving_square(4))
    with pytest.raises(DataError, match="6 frames.*nearest 5 or 7"):
        model.encode(moving_square(9), torch.tensor([6]))
    with pytest.raises(ValueError, match=r"video must be \[B, 1, F, 16, 16\]"):
        model.encode(torch.rand(1, 1, 5, 16, 12))
    tokens = model.encode(moving_square(5))
    with pytest.raises(DataError, match=r"grid \(3, 2, 8\), this tokenizer.s is \(t, 4, 4\)"):
        model.decode(Tokens(codes=tokens.codes, grid=(3, 2, 8)))
    with pytest.raises(DataError, match="codebook 0 holds 32"):
        model.decode(Tokens(codes=torch.full_like(tokens.codes, 32), grid=tokens.grid))


def test_training_quantizes_only_each_clips_own_frames():
    model = tiny()
    model.train()
    video = moving_square(9, batch=2)
    out = model(video, torch.tensor([9, 4]))  # 4 frames: rounded down to 3
    assert out.lengths.tolist() == [9, 3] and out.images.shape == (2, 1, 9, 16, 16)
    assert (out.codes[1, :, 32:] == -1).all() and (out.codes[1, :, :32] >= 0).all() and (out.codes[0] >= 0).all()
    out.images.mean().backward()
    assert model.first_embed.weight.grad.abs().sum() > 0, "straight-through gradients reach the encoder"


def test_hub_round_trip_same_codes_and_frames(model, tmp_path):
    model.save_pretrained(tmp_path / "hub")
    loaded = load_pretrained(tmp_path / "hub")
    assert isinstance(loaded, CViViTTokenizer) and loaded.fps == model.fps
    video = moving_square(5)
    assert torch.equal(loaded.encode(video).codes, model.encode(video).codes)
    assert torch.equal(loaded.decode(loaded.encode(video)), model.decode(model.encode(video)))


def test_cli_encodes_and_decodes_a_video_file(model, tmp_path, capsys):
    from conftest import cli_error

    model.save_pretrained(tmp_path / "hub")
    write_video(tmp_path / "clip.npz", moving_square(7)[0], fps=10)
    main(["encode", str(tmp_path / "hub"), str(tmp_path / "clip.npz"), str(tmp_path / "clip.safetensors")])
    tokens = Tokens.load(tmp_path / "clip.safetensors")
    assert tokens.grid == (4, 4, 4) and tokens.media_lengths.tolist() == [7]
    main(["decode", str(tmp_path / "hub"), str(tmp_path / "clip.safetensors"), str(tmp_path / "clip.mp4")])
    frames, fps = read_video(tmp_path / "clip.mp4", channels=1)
    assert frames.shape == (1, 7, 16, 16) and fps == 10
    write_video(tmp_path / "six.npz", moving_square(6)[0], fps=10)
    status, line = cli_error(["encode", str(tmp_path / "hub"), str(tmp_path / "six.npz"), str(tmp_path / "x")],
                             capsys)
    assert status == 1 and "six.npz: 6 frames" in line and "nearest 5 or 7" in line


def _rows(run: Path) -> list[dict]:
    (metrics,) = run.rglob("metrics.csv")
    with open(metrics) as handle:
        return list(csv.DictReader(handle))


def test_recipe_fits_on_moving_digits_and_exports_with_metrics(tmp_path):
    corpus, judge = tiny_moving_digits(tmp_path)
    run = tmp_path / "run"
    fit_tiny_cvivit(corpus, judge, run, max_steps=12)
    rows = _rows(run)
    losses = [float(r["train/l1"]) for r in rows if r.get("train/l1")]
    assert len(losses) == 12
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), "the reconstruction loss falls"
    assert any(r.get("val/psnr") for r in rows) and any(r.get("val/usage@q0") for r in rows)
    assert sorted((run / "media").rglob("reconstructions.png")), "validation writes strips of frames"

    main(["export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "hub"), "--data", str(corpus),
          "--judge", str(judge), "--split", "valid"])
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "## Measured metrics" in card and "judge_accuracy_real" in card and "psnr" in card
    main(["evaluate", str(tmp_path / "hub"), str(corpus), "--judge", str(judge), "--split", "valid",
          "--out", str(tmp_path / "evaluated")])
    assert "judge_accuracy_real" in (tmp_path / "evaluated" / "metrics.md").read_text()
    loaded = load_pretrained(tmp_path / "hub")
    rows = evaluate_video_tokenizer(loaded, str(corpus), split="valid", frame_counts=(1, 5))
    assert [r["frames"] for r in rows] == [1, 5] and all(r["psnr"] > 5 for r in rows)


def test_decode_codes_is_decode_unclamped_and_carries_gradients(model):
    tokens = model.encode(moving_square(9, batch=2))
    decoded = model.decode_codes(tokens.codes)
    assert torch.equal(decoded.clamp(0, 1), model.decode(tokens))
    decoded.sum().backward()
    assert model.tubelet_out.weight.grad is not None
    model.zero_grad()


def test_decoder_only_fine_tune_keeps_every_code_and_improves_reconstructions(tmp_path):
    """A second run with `decoder_only` from the first run's export: its encoder and codebooks come back
    bit for bit (so generators over its codes stay valid), its decoder changed and reconstructs the same
    codes better."""
    from mmtok.data.video import VideoDataModule

    corpus, judge = tiny_moving_digits(tmp_path)
    fit_tiny_cvivit(corpus, judge, tmp_path / "first", max_steps=4)
    main(["export", str(tmp_path / "first" / "checkpoints" / "last.ckpt"), str(tmp_path / "first_hub")])
    fit_tiny_cvivit(corpus, judge, tmp_path / "second", max_steps=16, overrides=(
        "--model.init_args.init_from", str(tmp_path / "first_hub"), "--model.init_args.decoder_only", "true"))
    main(["export", str(tmp_path / "second" / "checkpoints" / "last.ckpt"), str(tmp_path / "second_hub")])
    before, after = load_pretrained(tmp_path / "first_hub"), load_pretrained(tmp_path / "second_hub")

    decoder = {name for name, module in after.named_modules() if any(module is m for m in after.decoder_modules())}
    changed = {name for name, value in after.state_dict().items() if not torch.equal(value, before.state_dict()[name])}
    assert changed and all(name.split(".")[0] in decoder for name in changed), sorted(changed)

    data = VideoDataModule(path=str(corpus), build_embedded=False, frame_size=32, channels=1, num_frames=9,
                           batch_size=8, num_workers=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    lengths = before.usable_frames(batch["lengths"])
    video = batch["video"][:, :, : int(lengths.max())]
    old, new = before.encode(video, lengths), after.encode(video, lengths)
    assert torch.equal(old.codes, new.codes)
    valid = torch.arange(video.shape[2])[None, :] < lengths[:, None]
    errors = [float((tokenizer.decode(codes) - video).abs().transpose(1, 2)[valid].mean())
              for tokenizer, codes in ((before, old), (after, new))]
    assert errors[1] < 0.9 * errors[0], errors


def test_decoder_only_needs_a_tokenizer_that_names_its_decoder_and_a_start(tmp_path):
    from mmtok.codecs.rvq import RVQCodec
    from mmtok.training.image_tokenizer import ImageTokenizerModule

    tiny().save_pretrained(tmp_path / "start")
    with pytest.raises(ValueError, match="decoder_only: give init_from"):
        ImageTokenizerModule(tokenizer=tiny(), decoder_only=True)
    with pytest.raises(TypeError, match="RVQCodec cannot train its decoder alone"):
        RVQCodec(encoder_channels=4, decoder_channels=32, latent_dim=16).decoder_modules()
    module = ImageTokenizerModule(tokenizer=tiny(), init_from=str(tmp_path / "start"), decoder_only=True)
    trained = {name for name, p in module.tokenizer.named_parameters() if p.requires_grad}
    assert trained and all(name.split(".")[0] in {"from_latent", "decoder_temporal", "decoder_spatial", "first_out",
                                                  "tubelet_out"} for name in trained)
