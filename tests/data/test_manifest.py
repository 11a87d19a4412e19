import json
import logging
from pathlib import Path

import pytest

from mmtok.data.manifest import (
    assign_missing_splits,
    corpus_is_cached,
    assign_splits,
    load_entries,
    read_media_manifest,
    split_datasets,
    write_corpus_manifest,
)


def _manifest(root: Path, lines: list[str]) -> Path:
    for name in ("a.bin", "sub/b.bin"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reader_resolves_paths_keeps_fields_and_skips_blank_lines(tmp_path):
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"y")
    lines = [json.dumps({"clip": "a.bin", "text": "hi", "split": "valid"}), "  ",
             json.dumps({"clip": "sub/b.bin"}), json.dumps({"clip": str(elsewhere), "label": 3})]
    entries, skipped = read_media_manifest(_manifest(tmp_path, lines), key="clip")
    assert skipped == 0
    assert entries == [
        {"clip": str((tmp_path / "a.bin").resolve()), "text": "hi", "split": "valid"},
        {"clip": str((tmp_path / "sub" / "b.bin").resolve())},
        {"clip": str(elsewhere.resolve()), "label": 3},
    ]


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"clip": "a.bin"', "not valid JSON"),
        ('{"other": "a.bin"}', "expected a JSON object with a string 'clip' key"),
        ('{"clip": 5}', "expected a JSON object with a string 'clip' key"),
        ('["a.bin"]', "expected a JSON object"),
        ('{"clip": "gone.bin"}', "clip file .*gone\\.bin' does not exist"),
        ('{"clip": "a.bin", "split": "dev"}', "unknown split 'dev', expected one of"),
    ],
)
def test_reader_errors_name_file_and_line_or_skip(tmp_path, caplog, bad, message):
    good = json.dumps({"clip": "a.bin"})
    path = _manifest(tmp_path, [good, "", bad, good])
    with pytest.raises(ValueError, match=message) as error:
        read_media_manifest(path, key="clip")
    assert str(error.value).startswith(f"{path}:3: ")
    with caplog.at_level(logging.WARNING):
        entries, skipped = read_media_manifest(path, key="clip", skip_bad_lines=True)
    assert skipped == 1 and len(entries) == 2
    assert any(f"{path}:3: " in r.getMessage() and "skipping manifest line" in r.getMessage() for r in caplog.records)


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_media_manifest(tmp_path / "nothing.jsonl", key="clip")


def test_assign_splits_values():
    assert assign_splits([]) == []
    assert assign_splits(["only"]) == ["train"]
    names = [f"n{i}" for i in range(400)]
    splits = assign_splits(names)
    assert set(splits) == {"train", "valid", "test"}
    assert assign_splits(names[:300]) == splits[:300]  # stable: adding names does not move others
    assert assign_splits(["x"] * 3, valid_fraction=0.0, test_fraction=0.0) == ["valid", "test", "train"]


def test_missing_splits_come_from_the_relative_path(tmp_path):
    entries = [{"f": str(tmp_path / "a" / f"{i}.bin")} for i in range(20)] + [{"f": "/x/y.bin", "split": "test"}]
    assign_missing_splits(entries, key="f", root=tmp_path)
    expected = assign_splits([f"a/{i}.bin" for i in range(20)])
    assert [e["split"] for e in entries] == expected + ["test"]


def test_load_entries_from_a_plain_folder_and_its_errors(tmp_path):
    for name in ("b.dat", "a.DAT", "skip.txt"):
        (tmp_path / name).write_text("caption" if name.endswith(".txt") else "x")
    (tmp_path / "a.txt").write_text(" a caption \n")
    entries, skipped = load_entries(tmp_path, key="f", suffixes=(".dat",), skip_bad_lines=False, owner="Owner")
    assert skipped == 0 and [Path(e["f"]).name for e in entries] == ["a.DAT", "b.dat"]
    assert entries[0]["text"] == "a caption" and "text" not in entries[1]
    assert sorted(e["split"] for e in entries) == ["train", "valid"]
    with pytest.raises(FileNotFoundError, match=r"Owner: path .*nowhere' does not exist; build it"):
        load_entries(tmp_path / "nowhere", key="f", suffixes=(".dat",), skip_bad_lines=False, owner="Owner",
                     hint="build it")
    with pytest.raises(FileNotFoundError, match=r"holds no manifest.jsonl and no f files \(\.wav\)$"):
        load_entries(tmp_path, key="f", suffixes=(".wav",), skip_bad_lines=False, owner="Owner")


def test_split_datasets_caps_valid_and_needs_train(tmp_path):
    entries = [{"split": s} for s in ["train", "valid", "valid", "valid", "test"]]
    sets = split_datasets(entries, path=tmp_path, max_valid_items=2, owner="Owner", make=lambda split, items: items)
    assert {split: len(items) for split, items in sets.items()} == {"train": 1, "valid": 2, "test": 1}
    with pytest.raises(ValueError, match="Owner: .* has no train items"):
        split_datasets(entries[1:], path=tmp_path, max_valid_items=None, owner="Owner", make=lambda s, i: i)


def test_corpus_cache_round_trip(tmp_path):
    (tmp_path / "files").mkdir()
    rows = [{"f": f"files/{n}.bin", "n": n} for n in ("b", "a")]
    for row in rows:
        (tmp_path / row["f"]).write_bytes(b"x")
    params = {"seed": 0, "num": 2}
    manifest = write_corpus_manifest(tmp_path, rows, params, key="f")
    assert [json.loads(line)["n"] for line in manifest.read_text().splitlines()] == ["a", "b"]
    assert corpus_is_cached(tmp_path, params, key="f", count_key="num")
    assert not corpus_is_cached(tmp_path, {**params, "seed": 1}, key="f", count_key="num")
    (tmp_path / "files" / "a.bin").unlink()
    assert not corpus_is_cached(tmp_path, params, key="f", count_key="num")
