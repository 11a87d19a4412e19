"""The released video tokenizer in checkpoints/cvivit-moving-digits: a small Hub folder, causal on real
clips, whose reconstructions of moving digits the digit judge still reads at every length."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from mmtok.hub import load_pretrained

CHECKPOINT = REPO / "checkpoints" / "cvivit-moving-digits"
JUDGE = REPO / "checkpoints" / "digit-classifier"


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained(CHECKPOINT)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """12 one-digit clips of 17 frames like the training corpus (48 x 48, real MNIST digits; a new seed)."""
    from mmtok.data.manifest import read_manifest
    from mmtok.data.video import build_moving_digits

    folder = tmp_path_factory.mktemp("moving")
    build_moving_digits(folder, num_clips=12, seed=7, frame_size=48, min_frames=17, max_frames=17, max_digits=1,
                        video_format="npz", source="mnist", progress=False)
    return folder, read_manifest(folder, key="video")


def test_the_release_is_a_small_self_describing_hub_folder(shipped):
    assert {p.name for p in CHECKPOINT.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (CHECKPOINT / "model.safetensors").stat().st_size <= 10 * 2**20
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.codecs.cvivit.CViViTTokenizer"
    assert shipped.modality == "video" and shipped.grid == (None, 8, 8) and shipped.codebook_sizes == [1000, 1000]
    assert "judge_accuracy_real" in (CHECKPOINT / "README.md").read_text()


def test_real_clips_keep_their_digits_and_encode_causally(shipped, clips):
    from mmtok.data.video import digit_crops
    from mmtok.media import read_video

    _, entries = clips
    video = torch.stack([read_video(e["video"], channels=1)[0] for e in entries])  # [12, 1, 17, 48, 48]
    tokens = shipped.encode(video)
    assert tokens.grid == (5, 8, 8) and tokens.codes.shape == (12, 2, 320)
    prefix = shipped.encode(video[:, :, :9])
    agree = float((prefix.codes == tokens.codes[..., : 3 * 64]).float().mean())
    # causal in time: the first 9 frames encode to the first codes, up to float rounding between the two
    # sequence lengths' kernels, which now and then moves a latent across an FSQ rounding boundary
    assert agree >= 0.99, f"{agree:.4f} of the prefix codes agree"
    decoded = shipped.decode(tokens)
    judge = load_pretrained(JUDGE)
    crops = torch.cat([digit_crops(clip.transpose(0, 1), e["positions"][0]) for clip, e in zip(decoded, entries)])
    labels = torch.cat([torch.full((17,), int(e["digits"][0])) for e in entries])
    accuracy = float((judge.classify(crops) == labels).float().mean())
    # 0.87 and 17.6 dB here (the first stage, before its decoder was fine-tuned alone: 0.74 and 16.8 dB)
    assert accuracy >= 0.8, f"the judge reads {accuracy:.2f} of the reconstructed digits (0.81-0.86 on the test split)"
    psnr = -10 * torch.log10((decoded - video).pow(2).mean())
    assert psnr > 17.0, f"{float(psnr):.2f} dB (18.55 dB on the test split at 17 frames)"


def test_black_cells_take_a_handful_of_codes(shipped, clips):
    """What a text-to-video generator needs from it: a grid cell with nothing drawn in it (most of a clip)
    gets one of a few codes in each codebook (the VQ first release gave such cells over 700; issue 17)."""
    from mmtok.media import read_video

    _, entries = clips
    video = torch.stack([read_video(e["video"], channels=1)[0] for e in entries])  # [12, 1, 17, 48, 48]
    codes = shipped.encode(video).codes  # [12, 2, 5 groups · 8 · 8]
    groups = [video[:, :, :1]] + list(video[:, :, 1:].split(4, dim=2))
    inked = torch.stack([g.amax(dim=(1, 2)).unflatten(1, (8, 6)).unflatten(3, (8, 6)).amax(dim=(2, 4))
                         for g in groups], 1)  # [12, 5, 8, 8]: the brightest pixel of each cell's frames
    empty = (inked <= 0.05).flatten(1)
    assert float(empty.float().mean()) > 0.5
    distinct = [len(codes[:, q][empty].unique()) for q in range(2)]
    assert distinct[0] <= 8 and distinct[1] <= 40, f"empty cells take {distinct} distinct codes"
