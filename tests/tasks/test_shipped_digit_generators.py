"""The released class-conditional digit generators (checkpoints/digits-ar and digits-mdm over the VQ
grid, digits-ar-seed over SEED's 1-D tokens, digits-resgen over the depth-4 residual grid): small Hub
folders that name the shipped tokenizer, record the sampling their cards were measured with, and draw
digits the shipped judge reads as the class asked for."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import REPO
from mmtok.hub import load_pretrained
from mmtok.tasks import build_task
from mmtok.tasks.images import generate_images

JUDGE = REPO / "checkpoints" / "digit-classifier"
RELEASES = {"digits-ar": ("mmtok.ar.model.ARGenerator", "autoregressive", "checkpoints/vq-digits", [8, 8]),
            "digits-mdm": ("mmtok.diffusion.model.MaskedDiffusionGenerator", "ancestral", "checkpoints/vq-digits",
                           [8, 8]),
            "digits-ar-seed": ("mmtok.ar.model.ARGenerator", "autoregressive", "checkpoints/seed-digits", [16]),
            "digits-resgen": ("mmtok.diffusion.resgen.ResGenGenerator", "resgen", "checkpoints/vq-digits-residual",
                              [8, 8])}
# Below the judge's accuracy on 1,000 samples each (docs/benchmarks.md: 0.989, 0.984 and, SEED's de-tokenizer guided,
# 0.961; ResGen's 0.975 on 200), with room for 50.
MINIMUM_ACCURACY = {"digits-ar": 0.85, "digits-mdm": 0.85, "digits-ar-seed": 0.85, "digits-resgen": 0.85}
# The image releases aim at 10 MiB; the width-256 AR (5.2 M parameters in float16) is 14 kB over it, within the
# 20 MB every release must fit.
MAX_MIB = {"digits-ar": 20}
CARD_SECTION = {"digits-resgen": "## ResGen against AR and masked diffusion (bench/resgen.py)"}


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_the_release_is_a_small_hub_folder_naming_the_shipped_tokenizer(name):
    folder = REPO / "checkpoints" / name
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (folder / "model.safetensors").stat().st_size <= MAX_MIB.get(name, 10) * 2**20
    config = json.loads((folder / "config.json").read_text())
    assert config["mmtok_class"] == RELEASES[name][0]
    assert (config["tokenizer"], config["grid"]) == RELEASES[name][2:]
    assert config["task"]["class_path"] == "mmtok.tasks.images.ClassToImage"
    assert config["sampling"]["sampler"] == RELEASES[name][1] and config["sampling"]["cfg_scale"] > 1
    section = CARD_SECTION.get(name, "## Samples judged (bench/image_generators.py)")
    assert section in (folder / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_the_release_draws_the_digit_asked_for(name):
    folder = REPO / "checkpoints" / name
    generator = load_pretrained(folder)
    tokenizer = generator.load_tokenizer(near=folder)
    judge = load_pretrained(JUDGE)
    task = build_task(generator.task)
    classes, labels = task.evaluation_requests(generator, None, 5)
    sampling = generator.sampling_with()
    images = generate_images(generator, tokenizer, {"label": classes}, rng=torch.Generator().manual_seed(0),
                             **sampling)
    assert images.shape == (50, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    accuracy = float((judge.classify(images) == torch.tensor(labels)).float().mean())
    assert accuracy >= MINIMUM_ACCURACY[name], f"the judge reads {accuracy:.2f} of {name}'s digits as asked"
    one_each = classes[::5]  # the same seed gives the same images (checked on one per class, to save time)
    first, again = (generate_images(generator, tokenizer, {"label": one_each}, rng=torch.Generator().manual_seed(1),
                                    **sampling) for _ in range(2))
    assert torch.equal(again, first), "the same seed gives the same images"
    assert not torch.equal(first, images[::5]), "another seed (and batch) gives other images: the rng is used"


def test_the_image_bench_reports_each_seed_as_alone_and_their_mean(tmp_path, monkeypatch):
    """`bench/image_generators.py --seed 0 1`: the table is seed 0's, and the spread table holds each seed's
    figures as a run of that seed alone gives them, with their mean."""
    from mmtok.data.images import build_digits_corpus

    data = build_digits_corpus(tmp_path / "digits", max_per_class=15, seed=0, image_size=32,
                               progress=False)
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import image_generators

    def bench(*seeds: int) -> str:
        out = tmp_path / f"seeds{''.join(map(str, seeds))}.md"
        mdm = REPO / "checkpoints" / "digits-mdm"
        monkeypatch.setattr(sys, "argv", ["image_generators.py", "--model", f"mdm={mdm}", "--judge", str(JUDGE),
                                          "--data", str(data), "--samplers", "ancestral", "--steps", "4",
                                          "--samples-per-class", "3", "--seed", *map(str, seeds), "--out", str(out)])
        image_generators.main()
        return out.read_text()

    def rows(text: str) -> list[list[str]]:
        """The generated rows: seed 0's in the table, then the spread table's."""
        cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
                 if line.startswith("| mdm |")]
        return [row for row in cells if not row[1].startswith("tokenizer")]

    both, alone = bench(0, 1), bench(1)
    assert "The same over seeds 0 1" in both and "The same over seeds" not in alone
    table, spread = rows(both)[0], rows(both)[-1]
    _, _, seed0, seed1, _, mean = spread
    assert seed0 == f"{float(table[4]):.3f} / {float(table[5]):.3f}"
    assert seed1 == f"{float(rows(alone)[0][4]):.3f} / {float(rows(alone)[0][5]):.3f}", \
        "a seed's figures do not depend on the seeds run before it"
    distances = [float(cell.split(" / ")[1]) for cell in (seed0, seed1)]
    assert distances[0] != distances[1]
    assert abs(float(mean.split(" ± ")[0]) - sum(distances) / 2) <= 0.0015
