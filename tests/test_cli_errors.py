"""Bad input as a new user meets it: one line naming the file or argument (exit 2 for an argument,
1 for data), the traceback only with --debug; folder runs go on past bad files and lose nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_error
from mmtok.cli import main
from mmtok.files import atomic_path
from mmtok.media import write_png, write_wav
from mmtok.tokens import Tokens


def _tokens(path: Path, codes: torch.Tensor) -> Path:
    Tokens(codes=codes, frame_rate=50.0, sample_rate=16000).save(path)
    return path


@pytest.mark.parametrize("codes, message", [
    (torch.full((1, 4, 5), 5000), "codebook 0 holds 5000, expected 0..31 or -1 (codebook sizes [32, 32, 32, 32])"),
    (torch.full((1, 4, 5), -3), "codebook 0 holds -3, expected 0..31 or -1"),
    (torch.zeros(1, 12, 5, dtype=torch.long), "12 codebooks, this tokenizer has 4"),
    (torch.zeros(1, 4, 0, dtype=torch.long), "no steps, expected at least one"),
])
def test_decode_names_tokens_the_codec_cannot_read(codes, message, tiny_codec_folder, tmp_path, capsys):
    path = _tokens(tmp_path / "bad.safetensors", codes)
    code, line = cli_error(["decode", str(tiny_codec_folder), str(path), str(tmp_path / "out.wav")], capsys)
    assert code == 1 and line.startswith("mmtok decode: ") and f"{path}: {message}" in line
    assert not (tmp_path / "out.wav").exists()


def test_the_traceback_only_with_debug(tiny_codec_folder, tmp_path, capsys, monkeypatch):
    path = _tokens(tmp_path / "bad.safetensors", torch.full((1, 4, 5), 5000))
    with pytest.raises(ValueError, match="holds 5000"):
        main(["decode", str(tiny_codec_folder), str(path), str(tmp_path / "out.wav"), "--debug"])
    monkeypatch.setenv("MMTOK_DEBUG", "1")
    with pytest.raises(ValueError, match="holds 5000"):
        main(["decode", str(tiny_codec_folder), str(path), str(tmp_path / "out.wav")])


def test_bad_arguments_exit_2_and_bad_data_exit_1(tiny_codec_folder, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    code, line = cli_error(["data", "speech", "--out", str(tmp_path / "a_file")], capsys)
    assert (code, line) == (2, f"mmtok data: --out {tmp_path / 'a_file'}: is a file, expected a folder (new, or "
                               "holding a corpus to update)")
    code, line = cli_error(["encode", str(tiny_codec_folder), str(tmp_path / "missing.wav"), str(tmp_path / "t")],
                           capsys)
    assert (code, line) == (1, f"mmtok encode: {tmp_path / 'missing.wav'}: no such file or folder")
    code, line = cli_error(["decode", str(tmp_path / "no-model"), str(tmp_path / "x"), str(tmp_path / "y")], capsys)
    assert code == 1 and "no-model: no such Hub folder" in line


def test_export_refuses_a_checkpoint_with_pickled_objects_in_one_line(tmp_path, capsys):
    torch.save({"state_dict": {}, "mmtok": {"model_class": "x"}, "payload": Path("anything")}, tmp_path / "bad.ckpt")
    code, line = cli_error(["export", str(tmp_path / "bad.ckpt"), str(tmp_path / "hub")], capsys)
    assert code == 1 and line.startswith(f"mmtok export: {tmp_path / 'bad.ckpt'}: ") and "pickle" in line
    assert len(line) < 400, "torch's page-long explanation is not repeated"


def _speech(path: Path, seconds: float = 0.3) -> Path:
    t = np.arange(int(16000 * seconds)) / 16000
    return write_wav(path, 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32), sample_rate=16000)


def test_an_encode_folder_run_goes_on_past_a_bad_file_and_a_rerun_skips_what_is_written(
        tiny_codec_folder, tmp_path, capsys):
    folder = tmp_path / "wavs"
    for name in ("a", "c"):
        _speech(folder / f"{name}.wav")
    (folder / "b.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    out = tmp_path / "tokens"
    code, line = cli_error(["encode", str(tiny_codec_folder), str(folder), str(out)], capsys)
    assert code == 1 and line == "mmtok encode: 1 of 3 file(s) failed (listed above); the other 2 are written"
    assert sorted(p.name for p in out.iterdir()) == ["a.safetensors", "c.safetensors"]
    assert not any(p.name.startswith(".") for p in out.iterdir()), "no partial file left behind"
    before = (out / "a.safetensors").stat().st_mtime_ns
    cli_error(["encode", str(tiny_codec_folder), str(folder), str(out)], capsys)
    assert (out / "a.safetensors").stat().st_mtime_ns == before, "a complete output is not redone"
    with pytest.raises(SystemExit):
        main(["encode", str(tiny_codec_folder), str(folder), str(out), "--overwrite"])
    assert (out / "a.safetensors").stat().st_mtime_ns != before
    (folder / "b.wav").unlink()
    main(["encode", str(tiny_codec_folder), str(folder), str(out)])  # nothing bad left: exit 0
    main(["decode", str(tiny_codec_folder), str(out), str(tmp_path / "decoded")])
    assert sorted(p.name for p in (tmp_path / "decoded").iterdir()) == ["a.wav", "c.wav"]


def test_an_interrupted_write_leaves_no_file_under_the_final_name(tmp_path):
    target = tmp_path / "out.wav"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(target) as temporary:
        temporary.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]


MDM = Path(__file__).resolve().parents[1] / "checkpoints" / "tts-mdm-xcodec"


@pytest.mark.parametrize("flags, code, message", [
    (["--text", ""], 2, "--text '': empty, expected a sentence"),
    (["--text", "   "], 2, "--text '   ': empty, expected a sentence"),
    ([], 2, "--text: missing, expected a sentence (repeatable) or --text-file"),
    (["--text", "...", "--speaker", "us-f3"], 2, "--text '...': espeak-ng (us-f3) speaks no phonemes for it"),
    (["--text", "Hello there.", "--speaker", "nobody"], 2,
     "--speaker nobody: not a speaker of this generator (known: "),
    (["--text", "Hello there.", "--voice", "nobodyvoice"], 2, "voice 'nobodyvoice': espeak-ng cannot speak"),
    (["--text", "Hello there.", "--sampler", "maskgit", "--steps", "0"], 2, "--steps 0: must be ≥ 1"),
    (["--text", "Hello there.", "--sampler", "autoregressive"], 2,
     "sampler 'autoregressive': a MaskedDiffusionGenerator samples with fhs, ancestral, maskgit"),
    (["--text", "Hello there.", "--sampler", "maskgit", "--choice-temperature", "-1"], 2,
     "choice_temperature -1.0: must be ≥ 0"),
    (["--text", "Hello there.", "--sampler", "fhs", "--choice-temperature", "1"], 2,
     "choice_temperature: the fhs sampler reveals tokens at random times"),
])
def test_generation_refuses_what_cannot_be_generated(flags, code, message, tmp_path, capsys):
    got, line = cli_error(["generate", str(MDM), *flags, "--out", str(tmp_path / "out")], capsys)
    assert got == code and line.startswith("mmtok generate: ") and message in line, line


def test_an_autoregressive_generator_refuses_a_choice_temperature(tmp_path, capsys):
    code, line = cli_error(["generate", str(MDM.parent / "digits-ar"), "--class", "3", "--choice-temperature", "1",
                            "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "choice_temperature: an autoregressive generator draws the codes in a fixed" in line, line


def test_a_prompt_shorter_than_a_frame_is_refused(tmp_path, capsys):
    write_wav(tmp_path / "short.wav", np.zeros(100, dtype=np.float32), sample_rate=16000)
    code, line = cli_error(["generate", str(MDM), "--text", "Hello.", "--prompt", str(tmp_path / "short.wav"),
                            "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and f"{tmp_path / 'short.wav'}: 100 samples, shorter than one frame (320 samples" in line


VQ = Path(__file__).resolve().parents[1] / "checkpoints" / "vq-digits"


def test_an_image_folder_with_bad_pngs_encodes_the_good_ones_and_names_the_bad(tmp_path, capsys):
    folder = tmp_path / "pngs"
    rng = np.random.default_rng(0)
    write_png(folder / "good.png", rng.random((1, 32, 32)))
    write_png(folder / "rgba.png", rng.random((4, 32, 32)))  # converted to gray
    Image.fromarray((rng.random((32, 32)) * 65535).astype(np.uint16)).save(folder / "sixteen_bit.png")
    good = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    write_png(folder / "odd_size.png", rng.random((1, 28, 30)))
    out = tmp_path / "tokens"
    code, line = cli_error(["encode", str(VQ), str(folder), str(out)], capsys)
    assert code == 1 and line == "mmtok encode: 4 of 7 file(s) failed (listed above); the other 3 are written"
    assert sorted(p.name for p in out.iterdir()) == ["good.safetensors", "rgba.safetensors", "sixteen_bit.safetensors"]
    main(["decode", str(VQ), str(out), str(tmp_path / "decoded")])
    assert sorted(p.name for p in (tmp_path / "decoded").iterdir()) == ["good.png", "rgba.png", "sixteen_bit.png"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["encode", str(VQ), str(folder), str(out), "--overwrite"])
    err = capsys.readouterr().err
    for name, why in [("odd_size.png", "image is 28x30 (H x W), the tokenizer reads 32x32"),
                      ("empty.png", ""), ("text.png", ""), ("truncated.png", "")]:
        assert f"failed: {folder / name}: {why}" in err, (name, err)


def test_decode_of_image_tokens_from_another_grid_is_named(tmp_path, capsys):
    path = tmp_path / "t.safetensors"
    Tokens(codes=torch.zeros(1, 2, 16, dtype=torch.long), grid=(4, 4)).save(path)
    code, line = cli_error(["decode", str(VQ), str(path), str(tmp_path / "x.png")], capsys)
    assert code == 1 and f"{path}: tokens of grid (4, 4), this tokenizer's is (8, 8)" in line
