"""Semantic teachers: frame counts at the codec's rate, offline Hugging Face loading, frozen, rebuildable."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import HubertModel

from mmtok.codecs.semantic import HFSpeechEncoder, RecognizerEncoder, build_semantic_encoder


@pytest.mark.parametrize("num_samples", [400, 641, 3200, 5001, 16000])
@pytest.mark.parametrize("kind", ["hf", "recognizer"])
def test_features_have_the_codec_frame_count_for_any_length(kind, num_samples, hubert_folder, recognizer_folder):
    folder = hubert_folder if kind == "hf" else recognizer_folder
    teacher = build_semantic_encoder({"type": kind, "path": str(folder)})
    frames = math.ceil(num_samples / 320)
    features = teacher.features(torch.randn(2, 1, num_samples), num_frames=frames)
    assert features.shape == (2, teacher.dim, frames)
    assert torch.isfinite(features).all()


def test_hf_features_are_the_mean_of_hidden_states_or_one_layer_of_the_padded_audio(hubert_folder):
    audio = torch.randn(1, 1, 6400)
    reference = HubertModel.from_pretrained(hubert_folder).eval()
    with torch.no_grad():
        states = reference(F.pad(audio[:, 0], (160, 160)), output_hidden_states=True).hidden_states
    assert len(states) == 3 and states[0].shape[1] == 20  # padded by 160 on each side: the codec's 6400 / 320
    mean_teacher = build_semantic_encoder({"type": "hf", "path": str(hubert_folder)})
    layer_teacher = build_semantic_encoder({"type": "hf", "path": str(hubert_folder), "layer": 1})
    torch.testing.assert_close(mean_teacher.features(audio, num_frames=20), torch.stack(states).mean(0).transpose(1, 2))
    torch.testing.assert_close(layer_teacher.features(audio, num_frames=20), states[1].transpose(1, 2))
    resampled = mean_teacher.features(audio, num_frames=10)  # a codec at half the teacher's rate
    assert resampled.shape[-1] == 10


def test_hf_normalisation_follows_the_preprocessor_config(hubert_folder, tmp_path):
    assert build_semantic_encoder({"type": "hf", "path": str(hubert_folder)}).normalize is False
    folder = tmp_path / "normalised"
    HubertModel.from_pretrained(hubert_folder).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    teacher = build_semantic_encoder({"type": "hf", "path": str(folder)})
    assert teacher.normalize is True
    audio = torch.randn(1, 1, 3200)
    torch.testing.assert_close(teacher.features(audio, num_frames=10),
                               teacher.features(5 * audio + 0.5, num_frames=10), atol=1e-4, rtol=1e-4)


def test_audio_at_another_rate_is_resampled_to_the_teacher_rate(recognizer_folder):
    teacher = build_semantic_encoder({"type": "recognizer", "path": str(recognizer_folder)})
    audio = torch.randn(1, 1, 24000)
    features = teacher.features(audio, num_frames=50, sample_rate=24000)
    assert features.shape == (1, 24, 50)


@pytest.mark.parametrize("kind", ["hf", "recognizer"])
def test_teachers_are_frozen_and_stay_in_eval_mode(kind, hubert_folder, recognizer_folder):
    folder = hubert_folder if kind == "hf" else recognizer_folder
    teacher = build_semantic_encoder({"type": kind, "path": str(folder)})
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    audio = torch.randn(1, 1, 3200, requires_grad=True)
    assert not teacher.features(audio, num_frames=10).requires_grad


@pytest.mark.parametrize("kind", ["hf", "recognizer"])
def test_spec_rebuilds_the_architecture_without_the_weights_folder(kind, hubert_folder, recognizer_folder):
    folder = hubert_folder if kind == "hf" else recognizer_folder
    teacher = build_semantic_encoder({"type": kind, "path": str(folder)})
    spec = json.loads(json.dumps(teacher.spec()))  # JSON-serialisable, no path
    assert "path" not in spec and spec["type"] == kind
    rebuilt = build_semantic_encoder(spec)
    assert isinstance(rebuilt, HFSpeechEncoder if kind == "hf" else RecognizerEncoder)
    rebuilt.load_state_dict(teacher.state_dict())
    audio = torch.randn(2, 1, 4000)
    torch.testing.assert_close(rebuilt.features(audio, num_frames=13), teacher.features(audio, num_frames=13))


def test_bad_specs_name_what_is_wrong(hubert_folder, tmp_path):
    with pytest.raises(ValueError, match="type 'recognizer', 'hf' or 'ssl'"):
        build_semantic_encoder({"type": "clip", "path": "x"})
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        build_semantic_encoder({"type": "hf", "path": None, "layer": "mean"})
    with pytest.raises(ValueError, match=r"layer must be 'mean' or an int in 0\.\.2"):
        build_semantic_encoder({"type": "hf", "path": str(hubert_folder), "layer": 3})
    with pytest.raises(FileNotFoundError, match="missing: no such Hub folder"):
        build_semantic_encoder({"type": "hf", "path": str(tmp_path / "missing")})
    with pytest.raises(FileNotFoundError, match="Hub folder has no config.json"):
        build_semantic_encoder({"type": "hf", "path": str(tmp_path)})
    with pytest.raises(ValueError, match=r"audio must be \[B, 1, N\]"):
        build_semantic_encoder({"type": "hf", "path": str(hubert_folder)}).features(torch.randn(1, 100), num_frames=1)


class CentreSample(nn.Module):
    """A stand-in speech SSL model with HuBERT's frame layout (400-sample windows every 320 samples)
    whose one hidden state is the input sample at each window's centre: fed a ramp, it returns each
    frame's centre time, so where the frames sit can be read off the features."""

    config = SimpleNamespace(num_hidden_layers=0, hidden_size=1, conv_stride=(5, 2, 2, 2, 2, 2, 2),
                             feat_extract_norm="group")

    def forward(self, x, attention_mask=None, output_hidden_states=True):
        centre = x.unfold(-1, 400, 320)[..., 200:201]  # [B, T', 1]
        return SimpleNamespace(hidden_states=(centre,))


@pytest.mark.parametrize("num_samples", [8000, 6400, 6450, 6479, 6480, 16001])
def test_hf_frames_line_up_with_codec_frames_at_a_constant_offset(num_samples):
    """Padded by hop / 2 on each side (the X-Codec reference), teacher frame k is centred on sample
    320 k + 40 for every k: no stretching onto the codec's ceil(N / 320) frames (a frame missing at
    the end, when N mod 320 < 80, repeats the last one)."""
    teacher = HFSpeechEncoder(CentreSample())
    ramp = torch.arange(1, num_samples + 1, dtype=torch.float32).view(1, 1, -1)  # sample n holds n + 1
    frames = math.ceil(num_samples / 320)
    features = teacher.features(ramp, num_frames=frames)[0, 0]
    expected = torch.arange(frames) * 320.0 + 41
    computed = (num_samples + 320 - 400) // 320 + 1
    assert computed in (frames, frames - 1)
    torch.testing.assert_close(features[:computed], expected[:computed])
    assert float(features[-1]) == float(expected[computed - 1])


def test_hf_windows_bound_the_context_and_sit_on_a_fixed_grid(hubert_folder):
    torch.manual_seed(0)
    teacher = build_semantic_encoder({"type": "hf", "path": str(hubert_folder), "window_seconds": 0.4})
    assert teacher.context_seconds == pytest.approx(0.4) and teacher.alignment_seconds == pytest.approx(0.2)
    audio = torch.randn(1, 1, 3 * 16000)
    whole = teacher.features(audio, num_frames=150)
    assert whole.shape == (1, 32, 150)
    # An input starting on the grid (a multiple of 10 frames) gives the same frames away from its edges.
    part = teacher.features(audio[..., 40 * 320: 100 * 320], num_frames=60)
    torch.testing.assert_close(part[..., 20:40], whole[..., 60:80])
    unbounded = build_semantic_encoder({"type": "hf", "path": str(hubert_folder)})
    assert unbounded.context_seconds is None
    assert not torch.allclose(unbounded.features(audio[..., 40 * 320: 100 * 320], num_frames=60)[..., 20:40],
                              unbounded.features(audio, num_frames=150)[..., 60:80], atol=1e-4)
