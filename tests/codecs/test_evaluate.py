"""Codec evaluation with a phoneme-recognizer judge: the PER column is the judge's error on reconstructions."""

from __future__ import annotations

import pytest
import torch

from mmtok.asr import PhonemeRecognizer, phoneme_inventory
from conftest import cli_error
from mmtok.cli import main
from mmtok.codecs.evaluate import evaluate_codec
from mmtok.codecs.rvq import RVQCodec
from mmtok.data.audio import AudioDataModule
from mmtok.metrics import error_rate


@pytest.fixture(scope="module")
def codec_and_judge(tiny_corpus):
    torch.manual_seed(0)
    codec = RVQCodec(encoder_channels=4, decoder_channels=32, latent_dim=16, num_quantizers=2, codebook_size=32,
                     kmeans_init=False).eval()
    judge = PhonemeRecognizer(phonemes=phoneme_inventory(tiny_corpus), dim=24, num_layers=1, num_heads=2).eval()
    return codec, judge


def test_per_is_the_judge_error_on_reconstructions(codec_and_judge, tiny_corpus):
    codec, judge = codec_and_judge
    rows = evaluate_codec(codec, tiny_corpus, max_items=3, quantizers=[1, 2], judge=judge)
    module = AudioDataModule(path=str(tiny_corpus), valid_batch_size=1, max_valid_items=3)
    module.setup("test")
    batches = list(module.test_dataloader())[:3]
    for row in rows:
        references, hypotheses = [], []
        for batch in batches:
            reconstruction = codec.decode(codec.encode(batch["audio"]), num_quantizers=row["quantizers"])
            references.append(batch["phonemes"][0].split())
            hypotheses.append(judge.transcribe(reconstruction)[0].split())
        assert row["per"] == pytest.approx(error_rate(references, hypotheses))
    assert "per" not in evaluate_codec(codec, tiny_corpus, max_items=1, quantizers=[1])[0]


def test_evaluate_command_with_a_judge(codec_and_judge, tiny_corpus, tmp_path, capsys):
    codec, judge = codec_and_judge
    codec.save_pretrained(tmp_path / "codec")
    judge.save_pretrained(tmp_path / "judge")
    main(["evaluate", str(tmp_path / "codec"), str(tiny_corpus), "--max-items", "1",
          "--judge", str(tmp_path / "judge")])
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| quantizers"))
    assert "per" in [cell.strip() for cell in header.split("|")]
    code, line = cli_error(["evaluate", str(tmp_path / "codec"), str(tiny_corpus), "--judge", str(tmp_path / "codec")],
                           capsys)
    assert code == 2 and line == (f"mmtok evaluate: --judge {tmp_path / 'codec'}: a RVQCodec, expected a phoneme "
                                  "recognizer")
    code, line = cli_error(["evaluate", str(tmp_path / "codec"), str(tiny_corpus), "--cfg-scale", "3", "--seed", "1"],
                           capsys)
    assert code == 2 and line == (f"mmtok evaluate: --cfg-scale, --seed: only for generators, and {tmp_path / 'codec'} "
                                  "is not one"), "a flag that does not apply is refused, not ignored"
