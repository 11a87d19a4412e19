import json
import math
import pickle
import shutil

import huggingface_hub.hub_mixin
import pytest
import torch
from safetensors import safe_open

import mmtok.hub
from mmtok.codecs.rvq import RVQCodec
from mmtok.hub import load_pretrained

TINY = dict(encoder_channels=4, decoder_channels=32, latent_dim=16, codebook_size=32, num_quantizers=4,
            quantizer_dropout=0.25)


def _audio(num_samples: int = 2500) -> torch.Tensor:
    t = torch.arange(num_samples) / 16000
    generator = torch.Generator().manual_seed(1)
    noise = 0.05 * torch.randn(2, 1, num_samples, generator=generator)
    return 0.4 * torch.sin(2 * math.pi * torch.tensor([[[220.0]], [[470.0]]]) * t) + noise


@pytest.fixture(scope="module")
def codec() -> RVQCodec:
    torch.manual_seed(0)
    model = RVQCodec(**TINY)
    model.train()
    model(_audio(6400))  # k-means init of the codebooks, so that the saved codebooks are not all zero
    return model.eval()


@pytest.fixture(scope="module")
def saved(codec, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "tiny-rvq"
    codec.card = {"metrics": [{"num_quantizers": 4, "mel_distance": 1.23456}, {"num_quantizers": 1}],
                  "recipe": "Three Adam steps on a sine."}
    try:
        codec.save_pretrained(folder)
    finally:
        codec.card = None
    return folder


def _copy(saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    return folder


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_folder_layout_and_config(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((saved / "config.json").read_text())
    assert config == {
        "mmtok_class": "mmtok.codecs.rvq.RVQCodec", "sample_rate": 16000, "strides": [2, 4, 5, 8],
        "encoder_channels": 4, "decoder_channels": 32, "latent_dim": 16, "num_quantizers": 4,
        "codebook_size": 32, "ema_decay": 0.99, "kmeans_init": True, "kmeans_iters": 10,
        "dead_code_threshold": 2.0, "commitment_weight": 1.0, "quantizer_dropout": 0.25,
    }


def test_weights_are_safetensors_with_every_tensor(codec, saved):
    state = codec.state_dict()
    with safe_open(str(saved / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(state)
        embed = f.get_tensor("quantizer.layers.0._codebook.embed")
        assert bool(f.get_tensor("quantizer.layers.0._codebook.initted"))
    assert torch.equal(embed, state["quantizer.layers.0._codebook.embed"]) and embed.abs().sum() > 0


def test_readme_has_card_metrics_and_recipe(saved):
    readme = (saved / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: mmtok\n") and "- rvqcodec\n" in readme
    assert "# RVQCodec\n" in readme
    assert "## Training\n\nThree Adam steps on a sine.\n" in readme
    assert "## Measured metrics" in readme
    assert "| num_quantizers | mel_distance |\n|---|---|\n| 4 | 1.235 |\n| 1 |  |\n" in readme
    assert '"mmtok_class": "mmtok.codecs.rvq.RVQCodec"' in readme


def test_a_card_section_reads_to_the_next_heading_outside_code_blocks(tmp_path):
    torch.manual_seed(0)
    model = RVQCodec(**TINY)
    model.card = {"recipe": "Two steps with:\n\n```yaml\n## a recipe comment\nlr: 0.1\n```",
                  "metrics": [{"mel_distance": 1.0}]}
    model.save_pretrained(tmp_path)
    assert mmtok.hub.read_card_section(tmp_path, "## Training") == model.card["recipe"]
    assert mmtok.hub.read_card_section(tmp_path, "## Nowhere") is None


def test_readme_without_card_has_no_metrics(tmp_path):
    torch.manual_seed(0)
    RVQCodec(**TINY).save_pretrained(tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "An mmtok `RVQCodec` checkpoint." in readme
    assert "## Measured metrics" not in readme and "## Training" not in readme


@pytest.mark.parametrize("loader", ["from_pretrained", "load_pretrained"])
def test_round_trip_gives_identical_outputs(codec, saved, loader, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a local Hub folder must be read without pickle or downloads")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (mmtok.hub, "hf_hub_download"), (huggingface_hub.hub_mixin, "hf_hub_download")]:
        monkeypatch.setattr(module, name, refuse)
    loaded = RVQCodec.from_pretrained(saved) if loader == "from_pretrained" else load_pretrained(saved)
    monkeypatch.undo()
    assert type(loaded) is RVQCodec and not loaded.training
    assert loaded.quantizer_dropout == 0.25 and loaded.hop_length == 320
    for key, value in codec.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    audio, lengths = _audio(), torch.tensor([2500, 1234])
    tokens, again = codec.encode(audio, lengths), loaded.encode(audio, lengths)
    assert torch.equal(tokens.codes, again.codes) and torch.equal(tokens.lengths, again.lengths)
    assert len(set(tokens.codes[:, 0].flatten().tolist())) > 1  # a real encoding, not a constant
    decoded, decoded_again = codec.decode(tokens), loaded.decode(tokens)
    assert torch.equal(decoded, decoded_again) and decoded.abs().max() > 0


def test_load_pretrained_accepts_str_path(codec, saved):
    loaded = load_pretrained(str(saved))
    audio = _audio()
    assert torch.equal(loaded.encode(audio).codes, codec.encode(audio).codes)


def test_codebook_size_mismatch_names_folder_and_tensors(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_config(folder, codebook_size=64)
    with pytest.raises(ValueError) as info:
        RVQCodec.from_pretrained(folder)
    message = str(info.value)
    assert message.startswith(f"{folder}: config.json does not fit model.safetensors")
    for q in range(4):
        assert f"shape of quantizer.layers.{q}._codebook.embed: weights (1, 32, 16) != config (1, 64, 16)" in message
        assert f"shape of quantizer.layers.{q}._codebook.cluster_size: weights (1, 32) != config (1, 64)" in message
    assert "encoder" not in message and "decoder" not in message  # only the tensors that differ
    with pytest.raises(ValueError, match="config.json does not fit model.safetensors"):
        load_pretrained(folder)


def test_latent_dim_mismatch_lists_shapes(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_config(folder, latent_dim=8)
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    message = str(info.value)
    lines = message.splitlines()
    assert lines[0] == f"{folder}: config.json does not fit model.safetensors:"
    assert len(lines) == 1 + 4 + 2 * 4  # encoder out conv (bias, g, v), decoder in conv (v), 2 per codebook
    assert "  shape of encoder.layers.22.parametrizations.weight.original1: weights (16, 64, 3) != config (8, 64, 3)" \
        in lines
    assert "  shape of decoder.layers.0.parametrizations.weight.original1: weights (32, 16, 7) != config (32, 8, 7)" \
        in lines
    assert "  shape of quantizer.layers.3._codebook.embed: weights (1, 32, 16) != config (1, 32, 8)" in lines


def test_load_state_strict_cuts_long_lists():
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(13)])  # 26 tensors
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros(3, *v.shape[1:]) for k, v in before.items()}
    state["extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        mmtok.hub.load_state_strict(model, state, source="somewhere")
    lines = str(info.value).splitlines()
    assert lines[0] == "somewhere:" and len(lines) == 1 + 20 + 1
    assert lines[1] == "  not in the model the config builds: extra"
    assert lines[2] == "  shape of 0.weight: weights (3, 2) != config (2, 2)"
    assert lines[-1] == "  ... and 7 more"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was loaded


def test_fewer_quantizers_in_config_are_unexpected_tensors(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_config(folder, num_quantizers=3)
    with pytest.raises(ValueError, match=r"not in the model the config builds: quantizer\.layers\.3\._codebook"):
        RVQCodec.from_pretrained(folder)
    _edit_config(folder, num_quantizers=5)
    with pytest.raises(ValueError, match=r"missing from weights: quantizer\.layers\.4\._codebook\.embed \(1, 32, 16\)"):
        RVQCodec.from_pretrained(folder)


def test_only_mmtok_hub_classes_load_and_errors_name_the_config(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    for name, why in [("os.system", "'os.system' is not an mmtok HubMixin"),
                      ("mmtok.codecs.rvq.NoSuchCodec", "'mmtok.codecs.rvq.NoSuchCodec' is not an mmtok HubMixin"),
                      ("mmtok.nosuchmodule.Model", "'mmtok.nosuchmodule.Model' is not an mmtok HubMixin"),
                      ("mmtok.codecs.rvq.frame_mask", "'mmtok.codecs.rvq.frame_mask' is not a HubMixin class"),
                      ("mmtok.tokens.Tokens", "'mmtok.tokens.Tokens' is not a HubMixin class"),
                      (None, "class None is not an mmtok HubMixin")]:
        _edit_config(folder, mmtok_class=name)
        with pytest.raises(ValueError) as info:
            load_pretrained(folder)
        assert str(folder / "config.json") in str(info.value) and why in str(info.value), name


def test_a_new_model_class_loads_by_its_recorded_module_without_any_list(tmp_path):
    """A Hub model in a new mmtok module, which nothing imported, loads by the class its config
    records (run in fresh interpreters, with the module in a folder added to mmtok's package path)."""
    import subprocess
    import sys

    (tmp_path / "plugin_scaler.py").write_text(
        "import torch\nfrom torch import nn\nfrom mmtok.hub import HubMixin\n\n"
        "class Scaler(nn.Module, HubMixin):\n"
        "    def __init__(self, *, value: float = 1.0):\n"
        "        super().__init__()\n"
        "        self.scale = nn.Parameter(torch.tensor(value))\n")
    setup = f"import mmtok; mmtok.__path__.append({str(tmp_path)!r}); "
    folder = str(tmp_path / "folder")
    subprocess.run([sys.executable, "-c", setup + "from mmtok.plugin_scaler import Scaler; "
                    f"Scaler(value=2.5).save_pretrained({folder!r})"], check=True)
    assert json.loads((tmp_path / "folder" / "config.json").read_text())["mmtok_class"] == "mmtok.plugin_scaler.Scaler"
    load = (setup + "from mmtok.hub import load_pretrained; "
            f"model = load_pretrained({folder!r}); print(type(model).__module__, float(model.scale))")
    out = subprocess.run([sys.executable, "-c", load], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["mmtok.plugin_scaler", "2.5"]


def test_invalid_config_json(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_pretrained(folder)


def test_corrupt_weights(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "model.safetensors").write_bytes(b"garbage" * 20)
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_pretrained(folder)


def test_missing_folder_or_files(saved, tmp_path, monkeypatch):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model: no such Hub folder"):
        load_pretrained(missing)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\./no-such-model: no such Hub folder"):
        load_pretrained("./no-such-model")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="file.json: no such Hub folder"):  # a file, not a folder
        load_pretrained(tmp_path / "file.json")

    folder = _copy(saved, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder}: Hub folder has no model.safetensors"):
        RVQCodec.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="Hub folder has no model.safetensors"):
        load_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder}: Hub folder has no config.json"):
        load_pretrained(folder)
