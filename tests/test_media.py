import math

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf
import torch

from mmtok.media import (
    markdown_table,
    mel_spectrogram_db,
    spectrogram_figure,
    write_spectrogram_png,
    write_table,
    write_wav,
)


def _tone(freq: float, *, seconds: float = 1.0, sample_rate: int = 16000, amplitude: float = 0.5):
    """FloatTensor [N]: a sine at ``freq`` Hz."""
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return amplitude * torch.sin(2 * math.pi * freq * t)


@pytest.mark.parametrize("shape", [(800,), (1, 800), (2, 800)])
def test_wav_round_trip_within_16_bit(tmp_path, shape):
    audio = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = write_wav(tmp_path / "nested" / "dir" / "a.wav", audio, sample_rate=8000)
    data, rate = sf.read(path, dtype="float32", always_2d=True)  # [N, C]
    info = sf.info(path)
    assert rate == 8000 and info.subtype == "PCM_16"
    expected = audio.reshape(-1, 800).T.numpy()
    assert data.shape == expected.shape
    assert np.abs(data - expected).max() <= 1.0 / 32767 + 1e-6


def test_wav_clips_out_of_range_values(tmp_path):
    path = write_wav(tmp_path / "clip.wav", np.array([2.0, -3.0, 0.25], dtype=np.float32), sample_rate=16000)
    data, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(data, [32767 / 32768, -1.0, 0.25], atol=1e-4)


def test_wav_rejects_bad_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\[N\] or \[C, N\]"):
        write_wav(tmp_path / "x.wav", torch.zeros(1, 1, 10), sample_rate=16000)


def _mel_bin_of(freq: float, *, sample_rate: int, n_mels: int) -> int:
    """Index of the HTK-mel filter whose centre is nearest ``freq`` (torchaudio's default scale)."""
    def mel(hertz: float) -> float:
        return 2595 * math.log10(1 + hertz / 700)

    centres = np.linspace(0, mel(sample_rate / 2), n_mels + 2)[1:-1]
    return int(np.argmin(np.abs(centres - mel(freq))))


@pytest.mark.parametrize("freq", [500.0, 1000.0, 4000.0])
def test_mel_spectrogram_db_peaks_at_the_tone(freq):
    audio = _tone(freq)
    mel = mel_spectrogram_db(audio.unsqueeze(0), sample_rate=16000, n_mels=80)
    assert mel.shape == (80, 16000 // 256 + 1)
    assert float(mel.max()) == 0.0 and float(mel.min()) >= -80.0
    peak = int(mel[:, 10:-10].mean(dim=1).argmax())
    assert abs(peak - _mel_bin_of(freq, sample_rate=16000, n_mels=80)) <= 1


def test_mel_spectrogram_db_unnormalised_tracks_gain():
    loud = mel_spectrogram_db(_tone(1000.0, amplitude=0.5), sample_rate=16000, top_db=None)
    quiet = mel_spectrogram_db(_tone(1000.0, amplitude=0.05), sample_rate=16000, top_db=None)
    assert float(loud.max() - quiet.max()) == pytest.approx(20.0, abs=0.01)


def test_spectrogram_png_is_written_and_readable(tmp_path):
    audio = _tone(440.0)
    path = write_spectrogram_png(tmp_path / "plots" / "one.png", audio, sample_rate=16000, title="tone")
    image = matplotlib.image.imread(path)
    assert image.shape == (350, 600, 4)
    assert image[..., :3].std() > 0.05  # not a blank canvas

    pair = write_spectrogram_png(tmp_path / "pair.png", audio * 0.1, sample_rate=16000, reference=audio)
    assert matplotlib.image.imread(pair).shape == (350, 1200, 4)


def test_spectrogram_figure_shares_the_db_scale():
    audio = _tone(440.0)
    fig = spectrogram_figure(audio * 0.1, sample_rate=16000, title="quiet", reference=audio)
    reference_image, image = (axis.get_images()[0].get_array() for axis in fig.axes[:2])
    assert [axis.get_title() for axis in fig.axes[:2]] == ["reference", "quiet"]
    assert float(reference_image.max()) == 0.0
    assert float(image.max()) == pytest.approx(-20.0, abs=0.01)


def test_write_table_markdown(tmp_path):
    rows = [{"model": "rvq", "pesq": 3.14159, "bits": 6}, {"model": "a|b", "bits": 12, "note": None}]
    text = write_table(tmp_path / "tables" / "metrics.md", rows)
    assert text == (
        "| model | pesq | bits | note |\n"
        "|---|---|---|---|\n"
        "| rvq | 3.142 | 6 |  |\n"
        "| a\\|b |  | 12 |  |\n"
    )
    assert (tmp_path / "tables" / "metrics.md").read_text() == text
    assert markdown_table([{"x": torch.tensor(0.5)}]).splitlines()[-1] == "| 0.5 |"
    with pytest.raises(ValueError, match="rows is empty"):
        markdown_table([])
