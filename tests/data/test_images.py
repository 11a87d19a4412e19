import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmtok.data import images as images_module
from mmtok.data.images import (
    DIGIT_WORDS,
    ImageDataModule,
    ImageDataset,
    build_digits_corpus,
    collate_images,
    deform_digits,
    digit_captions,
    digit_splits,
    fit_size,
    load_digit_source,
    read_media_manifest,
)
from mmtok.media import MediaFileError, write_png

PER_CLASS = 6  # 60 images: 4 train, 1 valid, 1 test per class


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    build_digits_corpus(out, max_per_class=PER_CLASS, seed=0, progress=False)
    return out


def test_mnist_source_is_real_and_balanced():
    images, labels = load_digit_source("mnist")
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and (images[:, 0, :] == 0).mean() > 0.95  # white strokes, black border
    small, small_labels = load_digit_source("sklearn")
    assert small.shape == (1797, 8, 8) and small.max() == 255 and set(small_labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="source must be one of"):
        load_digit_source("cifar")


def test_captions_name_the_digit_in_several_phrasings():
    for label in range(10):
        captions = digit_captions(label)
        assert len(set(captions)) == len(captions) >= 4
        assert captions[0] == f"a handwritten digit {DIGIT_WORDS[label]}"
        assert all(DIGIT_WORDS[label] in c or re.search(rf"\b{label}\b", c) for c in captions)
    assert digit_captions(7)[0] == "a handwritten digit seven"


def test_random_captions_draw_every_phrasing_in_training_only(digits):
    from mmtok.data.images import ImageDataModule

    module = ImageDataModule(path=str(digits), channels=1, random_captions=True)
    module.setup()
    train, valid = module.datasets["train"], module.datasets["valid"]
    entry = train.entries[0]
    drawn = {train[0]["text"] for _ in range(60)}
    assert drawn == set(entry["captions"]), "all 5 phrasings come up, nothing else"
    assert {valid[0]["text"] for _ in range(10)} == {valid.entries[0]["text"]}, "evaluation keeps the fixed caption"
    fixed = ImageDataModule(path=str(digits), channels=1)
    fixed.setup()
    assert {fixed.datasets["train"][0]["text"] for _ in range(10)} == {entry["text"]}


def test_manifest_matches_the_source_pixels_and_labels(digits):
    rows = _rows(digits / "manifest.jsonl")
    images, labels = load_digit_source("mnist")
    assert len(rows) == 10 * PER_CLASS
    assert [r["image"] for r in rows] == sorted(r["image"] for r in rows)
    for row in rows:
        assert labels[row["source_index"]] == row["label"]  # the digit named is the digit drawn
        drawn = np.asarray(Image.open(digits / row["image"]))
        assert drawn.dtype == np.uint8 and drawn.shape == (28, 28)
        np.testing.assert_array_equal(drawn, images[row["source_index"]])
        assert row["captions"] == digit_captions(row["label"]) and row["text"] in row["captions"]
        words = {w for i, w in enumerate(DIGIT_WORDS) if re.search(rf"\b{w}\b", row["text"]) and i != row["label"]}
        assert not words  # no other digit is named
    assert len({r["text"] for r in rows if r["label"] == 3}) > 1  # phrasings vary
    params = json.loads((digits / "corpus.json").read_text())
    assert (params["source"], params["image_size"], params["num_images"]) == ("mnist", 28, 10 * PER_CLASS)


def test_splits_are_disjoint_and_stratified(digits):
    rows = _rows(digits / "manifest.jsonl")
    by_split = {s: {r["source_index"] for r in rows if r["split"] == s} for s in ("train", "valid", "test")}
    assert not (by_split["train"] & by_split["valid"] or by_split["train"] & by_split["test"]
                or by_split["valid"] & by_split["test"])
    assert sum(map(len, by_split.values())) == len(rows)
    for label in range(10):
        counts = [sum(r["label"] == label and r["split"] == s for r in rows) for s in ("train", "valid", "test")]
        assert counts == [PER_CLASS - 2, 1, 1]
    _, labels = load_digit_source("mnist")
    full = digit_splits(labels, seed=0)
    assert [full.count(s) for s in ("train", "valid", "test")] == [4000, 500, 500]
    assert full == digit_splits(labels, seed=0) and full != digit_splits(labels, seed=1)


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(digits, tmp_path):
    again = build_digits_corpus(tmp_path / "again", max_per_class=PER_CLASS, seed=0, progress=False)
    assert again.read_bytes() == (digits / "manifest.jsonl").read_bytes()
    for row in _rows(again):
        assert (tmp_path / "again" / row["image"]).read_bytes() == (digits / row["image"]).read_bytes()
    other = _rows(build_digits_corpus(tmp_path / "other", max_per_class=PER_CLASS, seed=1, progress=False))
    assert [r["split"] for r in other] != [r["split"] for r in _rows(again)]
    assert [r["text"] for r in other] != [r["text"] for r in _rows(again)]


def test_cache_and_rebuild(digits, tmp_path, monkeypatch, capsys):
    files = [digits / "manifest.jsonl", digits / "corpus.json", *sorted((digits / "images").glob("*.png"))]
    before = [f.stat().st_mtime_ns for f in files]

    def fail(*args, **kwargs):
        raise AssertionError("a png was written although the corpus is cached")

    monkeypatch.setattr(images_module, "write_png", fail)
    assert build_digits_corpus(digits, max_per_class=PER_CLASS, seed=0) == digits / "manifest.jsonl"
    assert [f.stat().st_mtime_ns for f in files] == before
    monkeypatch.undo()
    out = tmp_path / "small"
    build_digits_corpus(out, max_per_class=4, seed=0, progress=True)
    assert "mnist digits" in capsys.readouterr().err  # the tqdm progress bar
    assert len(list((out / "images").glob("*.png"))) == 40
    build_digits_corpus(out, max_per_class=3, seed=0, progress=False)
    assert len(list((out / "images").glob("*.png"))) == 30  # stale pngs removed
    (out / "images" / "digit00002.png").unlink()
    build_digits_corpus(out, max_per_class=3, seed=0, progress=False)  # a missing png triggers a rebuild
    assert (out / "images" / "digit00002.png").is_file()


def test_pad_and_upscale_to_32(tmp_path):
    padded = build_digits_corpus(tmp_path / "pad", image_size=32, max_per_class=3, progress=False)
    images, _ = load_digit_source("mnist")
    for row in _rows(padded)[:5]:
        pixels = np.asarray(Image.open(tmp_path / "pad" / row["image"]))
        assert pixels.shape == (32, 32)
        np.testing.assert_array_equal(pixels[2:30, 2:30], images[row["source_index"]])
        assert pixels[:2].max() == pixels[30:].max() == pixels[:, :2].max() == pixels[:, 30:].max() == 0
    small = build_digits_corpus(tmp_path / "sk", source="sklearn", image_size=16, resize="upscale",
                                max_per_class=3, progress=False)
    rows = _rows(small)
    assert len(rows) == 30 and all(r["source"] == "sklearn" for r in rows)
    assert np.asarray(Image.open(tmp_path / "sk" / rows[0]["image"])).shape == (16, 16)
    with pytest.raises(ValueError, match="cannot pad 28x28 to 16x16"):
        fit_size(images[0], size=16, mode="pad")


def test_deformed_copies_are_seeded_plausible_digits():
    images, _ = load_digit_source("mnist")
    digit = fit_size(images[3], size=32, mode="pad")
    still = deform_digits(digit, 2, rng=torch.Generator().manual_seed(0), degrees=0, scale=0, shear=0,
                          shift_pixels=0, elastic_pixels=0)
    np.testing.assert_array_equal(still, np.stack([digit, digit]))  # no deformation: the digit itself
    copies = deform_digits(digit, 8, rng=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(copies, deform_digits(digit, 8, rng=torch.Generator().manual_seed(1)))
    assert copies.shape == (8, 32, 32) and copies.dtype == np.uint8
    rows, cols = np.mgrid[0:32, 0:32]
    centre = np.array([(rows * digit).sum(), (cols * digit).sum()]) / digit.sum()
    for copy in copies:
        assert not np.array_equal(copy, digit)
        assert 0.7 < copy.sum() / digit.sum() < 1.3  # the ink is kept, within the +-10 % scales and the blur
        moved = np.array([(rows * copy).sum(), (cols * copy).sum()]) / copy.sum()
        assert np.abs(moved - centre).max() < 5  # shifted by at most 2 px plus what rotation and shear move
        assert copy[:, :1].max() == copy[:, -1:].max() == 0  # the digit stays inside the frame


def test_augmented_copies_add_train_digits_only_and_keep_the_originals(digits, tmp_path):
    copies = 3
    augmented = _rows(build_digits_corpus(tmp_path / "aug", max_per_class=PER_CLASS, seed=0, progress=False,
                                          augment_copies=copies))
    plain = _rows(digits / "manifest.jsonl")
    assert [r for r in augmented if "augmented_from" not in r] == plain  # originals, captions and splits as before
    by_image = {r["image"]: r for r in plain}
    made = [r for r in augmented if "augmented_from" in r]
    assert len(made) == copies * sum(r["split"] == "train" for r in plain)
    for row in made:
        original = by_image[row["augmented_from"]]
        assert row["split"] == original["split"] == "train" and row["label"] == original["label"]
        assert row["text"] in digit_captions(row["label"])
        assert not np.array_equal(np.asarray(Image.open(tmp_path / "aug" / row["image"])),
                                  np.asarray(Image.open(digits / original["image"])))
    with pytest.raises(ValueError, match="augment_copies must be >= 0"):
        build_digits_corpus(tmp_path / "bad", max_per_class=PER_CLASS, augment_copies=-1)


def test_data_module_over_the_corpus(digits):
    module = ImageDataModule(path=str(digits), channels=1, batch_size=8, valid_batch_size=10)
    module.setup()
    assert [len(module.datasets[s]) for s in ("train", "valid", "test")] == [40, 10, 10]
    batch = next(iter(module.val_dataloader()))
    assert batch["image"].shape == (10, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) == 1.0
    assert batch["labels"].tolist() == sorted(batch["labels"].tolist())  # valid holds one per class
    rows = {str((digits / r["image"]).resolve()): r for r in _rows(digits / "manifest.jsonl")}
    assert batch["text"] == [rows[p]["text"] for p in batch["path"]]
    assert batch["labels"].tolist() == [rows[p]["label"] for p in batch["path"]]
    rgb = ImageDataModule(path=str(digits / "manifest.jsonl"), channels=3, image_size=32, resize=True, batch_size=4)
    rgb.setup()
    train = next(iter(rgb.train_dataloader()))
    assert train["image"].shape == (4, 3, 32, 32)
    torch.testing.assert_close(train["image"][:, 0], train["image"][:, 2])  # gray repeated to RGB


def test_embedded_build_through_the_data_module(tmp_path):
    module = ImageDataModule(path=str(tmp_path / "built"), build_embedded=True, embedded_source="sklearn",
                             image_size=8, batch_size=16)
    module.prepare_data()
    module.setup()
    assert (tmp_path / "built" / "corpus.json").is_file()
    assert sum(len(d) for d in module.datasets.values()) == 1797
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageDataModule(path=str(tmp_path / "nothing"))


def _folder(root: Path) -> Path:
    """A user folder: gray png with caption, RGBA png, RGB jpg with caption, palette png, one not captioned."""
    rng = np.random.default_rng(0)
    write_png(root / "a" / "gray.png", rng.integers(0, 256, (1, 12, 12), dtype=np.uint8))
    (root / "a" / "gray.txt").write_text("a gray square\n")
    write_png(root / "a" / "alpha.png", rng.integers(0, 256, (4, 12, 12), dtype=np.uint8))
    (root / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / "b" / "photo.jpg")
    (root / "b" / "photo.txt").write_text("  a noisy photo  ")
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).convert("P").save(root / "b" / "pal.png")
    (root / "b" / "notes.md").write_text("not an image")
    return root


def test_folder_loader_converts_modes_and_reads_sidecar_captions(tmp_path):
    root = _folder(tmp_path / "user")
    module = ImageDataModule(path=str(root), channels=3, batch_size=8)
    module.setup()
    items = [item for split in ("train", "valid", "test") for item in module.datasets[split]]
    assert len(items) == 4 and {len(module.datasets[s]) for s in ("train", "valid", "test")} == {2, 1}
    by_name = {Path(item["path"]).name: item for item in items}
    assert set(by_name) == {"gray.png", "alpha.png", "photo.jpg", "pal.png"}
    assert all(item["image"].shape == (3, 12, 12) for item in items)
    assert by_name["gray.png"]["text"] == "a gray square" and by_name["photo.jpg"]["text"] == "a noisy photo"
    assert "text" not in by_name["alpha.png"]
    batch = collate_images(items)
    assert batch["image"].shape == (4, 3, 12, 12) and "labels" not in batch
    assert sorted(batch["text"]) == ["", "", "a gray square", "a noisy photo"]  # "" where there is no caption


def _manifest(root: Path, lines: list[str]) -> Path:
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_manifest_lines_name_file_and_line_or_are_counted(tmp_path, caplog):
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        write_png(tmp_path / f"{name}.png", rng.integers(0, 256, (1, 8, 8), dtype=np.uint8))
    good = [json.dumps({"image": f"{n}.png", "split": s}) for n, s in (("a", "train"), ("b", "valid"), ("c", "test"))]
    cases = [
        ('{"image": "a.png", "split": "train"', r"manifest\.jsonl:2: not valid JSON"),
        ('{"text": "no image key"}', r"manifest\.jsonl:2: expected a JSON object with a string 'image' key"),
        ('["a.png"]', r"manifest\.jsonl:2: expected a JSON object"),
        ('{"image": "gone.png"}', r"manifest\.jsonl:2: image file .*gone\.png' does not exist"),
        ('{"image": "a.png", "split": "dev"}', r"manifest\.jsonl:2: unknown split 'dev'"),
    ]
    for bad, message in cases:
        path = _manifest(tmp_path, [good[0], bad, "", *good[1:]])
        with pytest.raises(ValueError, match=message) as error:
            read_media_manifest(path, key="image")
        assert str(path) in str(error.value)
        with pytest.raises(ValueError, match=message):
            ImageDataModule(path=str(tmp_path)).setup()
    path = _manifest(tmp_path, [good[0], cases[0][0], cases[3][0], *good[1:], cases[4][0]])
    entries, skipped = read_media_manifest(path, key="image", skip_bad_lines=True)
    assert skipped == 3 and [Path(e["image"]).name for e in entries] == ["a.png", "b.png", "c.png"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmtok.data.images"):
        module = ImageDataModule(path=str(tmp_path), skip_bad_files=True)
        module.setup()
    assert module.num_skipped == 3
    assert sum("skipping manifest line" in r.getMessage() for r in caplog.records) == 3
    assert any("manifest.jsonl:6: unknown split" in r.getMessage() for r in caplog.records)


def test_bad_image_files_raise_naming_the_file_or_are_skipped(tmp_path, caplog):
    rng = np.random.default_rng(2)
    good = write_png(tmp_path / "good.png", rng.integers(0, 256, (3, 40, 40), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    wrong_size = write_png(tmp_path / "big.png", rng.integers(0, 256, (3, 48, 40), dtype=np.uint8))
    entries = [{"image": str(p)} for p in (good, truncated, wrong_size)]
    strict = ImageDataset(entries, image_size=40)
    assert strict[0]["image"].shape == (3, 40, 40)
    with pytest.raises(MediaFileError, match="cannot decode image") as error:
        strict[1]
    assert str(error.value).startswith(str(truncated))
    with pytest.raises(MediaFileError, match=r"image is 48x40 \(H x W\), expected 40x40") as error:
        strict[2]
    assert str(error.value).startswith(str(wrong_size))
    assert ImageDataset(entries[2:], image_size=40, resize=True)[0]["image"].shape == (3, 40, 40)

    lenient = ImageDataset(entries, image_size=40, skip_bad_files=True)
    with caplog.at_level(logging.WARNING, logger="mmtok.data.images"):
        batch = collate_images([lenient[i] for i in range(3)])
    assert batch["image"].shape == (1, 3, 40, 40) and lenient.num_skipped == 2
    assert sum("skipping bad image file" in r.getMessage() for r in caplog.records) == 2
    assert collate_images([lenient[1]]) is None and lenient.num_skipped == 3
    with pytest.raises(ValueError, match=r"big\.png is \(3, 48, 40\) but .*good\.png is \(3, 40, 40\)"):
        collate_images([strict[0], ImageDataset(entries[2:])[0]])


def test_cli_builds_the_digits_corpus(tmp_path, capsys):
    from mmtok.cli import main

    main(["data", "digits", "--out", str(tmp_path / "d"), "--max-per-class", "3", "--image-size", "32"])
    assert f"digits corpus: {tmp_path / 'd' / 'manifest.jsonl'}" in capsys.readouterr().out
    rows = _rows(tmp_path / "d" / "manifest.jsonl")
    assert len(rows) == 30 and np.asarray(Image.open(tmp_path / "d" / rows[0]["image"])).shape == (32, 32)
    main(["data", "digits", "--out", str(tmp_path / "a"), "--max-per-class", "3", "--augment-copies", "2"])
    rows = _rows(tmp_path / "a" / "manifest.jsonl")
    assert len(rows) == 30 + 2 * 10 and sum("augmented_from" in r for r in rows) == 20  # 1 train digit per class
