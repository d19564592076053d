"""Dataset discovery and splitting on real folders (LocalStorage): layouts, class selection, refusals."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kubegraft.runtime import ExitCode, FailureReason
from kubegraft.spec import DatasetSpec
from kubegraft_trainer.dataset import DatasetSplits, Example, discover, split_examples
from kubegraft_trainer.errors import TrainerError
from kubegraft_trainer.storage import LocalStorage


def make_folders(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, count in counts.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"img{i:03d}{ext}").write_bytes(b"")  # discovery reads names only, never content
    return root


def spec(uri: Path | str, **fields: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"uri": str(uri), **fields})


def keys(examples: list[Example]) -> list[str]:
    return [ex.key for ex in examples]


def test_folders_layout_labels_by_folder_and_sorts_classes(tmp_path: Path) -> None:
    make_folders(tmp_path, {"zebra": 10, "ant": 10, "moth": 10})

    splits = discover(spec(tmp_path), LocalStorage(str(tmp_path)))

    assert splits.classes == ["ant", "moth", "zebra"]
    for ex in splits.train + splits.validation + splits.test:
        assert splits.classes[ex.label] == ex.key.split("/")[0]
    assert sum(splits.counts.values()) == 30


def test_same_seed_gives_same_split_and_other_seed_differs(tmp_path: Path) -> None:
    make_folders(tmp_path, {"a": 40, "b": 40})
    storage = LocalStorage(str(tmp_path))

    first = discover(spec(tmp_path, seed=7), storage)
    again = discover(spec(tmp_path, seed=7), storage)
    other = discover(spec(tmp_path, seed=8), storage)

    assert first.record() == again.record()
    assert keys(first.test) != keys(other.test)


def test_split_does_not_depend_on_listing_order() -> None:
    examples = [Example(f"{c}/{i}.png", label) for label, c in enumerate("abc") for i in range(50)]
    shuffled = examples[:]
    random.Random(3).shuffle(shuffled)

    ordered = split_examples(examples, ["a", "b", "c"], validation_split=0.2, test_split=0.1, seed=42)
    unordered = split_examples(shuffled, ["a", "b", "c"], validation_split=0.2, test_split=0.1, seed=42)

    assert ordered.record() == unordered.record()


def test_split_is_stratified_per_class() -> None:
    examples = [Example(f"a/{i}.png", 0) for i in range(100)] + [Example(f"b/{i}.png", 1) for i in range(20)]

    splits = split_examples(examples, ["a", "b"], validation_split=0.15, test_split=0.25, seed=1)

    assert Counter(ex.label for ex in splits.test) == {0: 25, 1: 5}
    assert Counter(ex.label for ex in splits.validation) == {0: 15, 1: 3}
    assert Counter(ex.label for ex in splits.train) == {0: 60, 1: 12}
    every = keys(splits.train) + keys(splits.validation) + keys(splits.test)
    assert len(every) == len(set(every)) == 120


def test_adding_images_moves_only_the_new_ones() -> None:
    base = [Example(f"a/{i}.png", 0) for i in range(200)] + [Example(f"b/{i}.png", 1) for i in range(200)]
    grown = [*base, Example("a/new.png", 0), Example("b/new.png", 1)]

    before = split_examples(base, ["a", "b"], validation_split=0.1, test_split=0.1, seed=5)
    after = split_examples(grown, ["a", "b"], validation_split=0.1, test_split=0.1, seed=5)

    moved = set(keys(before.train)) - set(keys(after.train))
    assert len(moved) <= 2  # at most one image per class crosses a rounding boundary


def test_tiny_class_gets_one_image_per_split(tmp_path: Path) -> None:
    make_folders(tmp_path, {"big": 30, "tiny": 3})

    splits = discover(spec(tmp_path, validationSplit=0.1, testSplit=0.1), LocalStorage(str(tmp_path)))

    tiny = splits.classes.index("tiny")
    assert [
        sum(ex.label == tiny for ex in split) for split in (splits.train, splits.validation, splits.test)
    ] == [
        1,
        1,
        1,
    ]


def test_class_too_small_for_every_split_is_refused_with_its_name_and_count(tmp_path: Path) -> None:
    make_folders(tmp_path, {"big": 30, "tiny": 2})

    with pytest.raises(TrainerError) as caught:
        discover(spec(tmp_path), LocalStorage(str(tmp_path)))

    assert caught.value.reason == FailureReason.TOO_FEW_IMAGES
    assert "'tiny' has 2" in caught.value.message
    assert "at least 3" in caught.value.message
    assert caught.value.exit_code == ExitCode.INVALID


def test_without_test_split_two_images_per_class_suffice(tmp_path: Path) -> None:
    make_folders(tmp_path, {"a": 2, "b": 2})

    splits = discover(spec(tmp_path, testSplit=0), LocalStorage(str(tmp_path)))

    assert splits.counts == {"train": 2, "validation": 2, "test": 0}


def test_classes_select_and_order_the_labels(tmp_path: Path) -> None:
    make_folders(tmp_path, {"cat": 10, "dog": 10, "eel": 10})

    splits = discover(spec(tmp_path, classes=["eel", "cat"]), LocalStorage(str(tmp_path)))

    assert splits.classes == ["eel", "cat"]
    every = splits.train + splits.validation + splits.test
    assert {ex.key.split("/")[0] for ex in every if ex.label == 0} == {"eel"}
    assert not any(ex.key.startswith("dog/") for ex in every)
    assert splits.ignored == 10


def test_unknown_class_in_classes_is_refused_by_name(tmp_path: Path) -> None:
    make_folders(tmp_path, {"cat": 10, "dog": 10})

    with pytest.raises(TrainerError) as caught:
        discover(spec(tmp_path, classes=["cat", "zebra"]), LocalStorage(str(tmp_path)))

    assert caught.value.reason == FailureReason.INVALID_SPEC
    assert "'zebra'" in caught.value.message
    assert "cat, dog" in caught.value.message


def test_single_class_is_refused(tmp_path: Path) -> None:
    make_folders(tmp_path, {"only": 10})

    with pytest.raises(TrainerError) as caught:
        discover(spec(tmp_path), LocalStorage(str(tmp_path)))

    assert caught.value.reason == FailureReason.TOO_FEW_CLASSES
    assert "'only'" in caught.value.message


def test_missing_folder_is_dataset_not_found(tmp_path: Path) -> None:
    with pytest.raises(TrainerError) as caught:
        discover(spec(tmp_path / "nope"), LocalStorage(str(tmp_path / "nope")))

    assert caught.value.reason == FailureReason.DATASET_NOT_FOUND
    assert not caught.value.retryable


def test_folder_without_images_is_dataset_empty(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("no images here")
    (tmp_path / "README.md").write_text("top-level file")

    with pytest.raises(TrainerError) as caught:
        discover(spec(tmp_path), LocalStorage(str(tmp_path)))

    assert caught.value.reason == FailureReason.DATASET_EMPTY
    assert "2 other files ignored" in caught.value.message


def test_image_extensions_match_any_case_and_other_files_are_counted(tmp_path: Path) -> None:
    for name in ("a/x.JPG", "a/y.jpeg", "a/z.Png", "a/sub/w.bmp", "b/1.gif", "b/2.png", "b/3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    for name in ("a/labels.txt", "b/.DS_Store", "b/model.h5", "top.csv"):
        (tmp_path / name).write_bytes(b"")

    splits = discover(spec(tmp_path, testSplit=0), LocalStorage(str(tmp_path)))

    found = set(keys(splits.train + splits.validation))
    assert found == {"a/x.JPG", "a/y.jpeg", "a/z.Png", "a/sub/w.bmp", "b/1.gif", "b/2.png", "b/3.png"}
    assert splits.ignored == 4


def write_manifest(root: Path, text: str, images: list[str]) -> None:
    for key in images:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"")
    (root / "labels.csv").write_text(text)


def test_manifest_with_header_and_boxes(tmp_path: Path) -> None:
    rows = [f"img/{i}.jpg,{'cat' if i % 2 else 'dog'},1,2,30,40" for i in range(12)]
    write_manifest(tmp_path, "path,label,xmin,ymin,xmax,ymax\n" + "\n".join(rows) + "\n", [])

    splits = discover(spec(tmp_path, layout="manifest", manifest="labels.csv"), LocalStorage(str(tmp_path)))

    assert splits.classes == ["cat", "dog"]
    every = splits.train + splits.validation + splits.test
    assert len(every) == 12
    assert {ex.box for ex in every} == {(1, 2, 30, 40)}
    assert next(ex for ex in every if ex.key == "img/1.jpg").label == splits.classes.index("cat")


def test_manifest_without_header_and_boxes_mixed(tmp_path: Path) -> None:
    text = "./a.png,x\nb.png,x,0,0,5,5\nc.png,x\nd.png,y\ne.png,y\nf.png,y,1.0,1.0,9.6,9.4\n"
    write_manifest(tmp_path, text, [])

    splits = discover(
        spec(tmp_path, layout="manifest", manifest="labels.csv", testSplit=0), LocalStorage(str(tmp_path))
    )

    every = {ex.key: ex for ex in splits.train + splits.validation}
    assert set(every) == {"a.png", "b.png", "c.png", "d.png", "e.png", "f.png"}
    assert every["a.png"].box is None
    assert every["b.png"].box == (0, 0, 5, 5)
    assert every["f.png"].box == (1, 1, 10, 9)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("a.png", "got 1 fields"),
        ("a.png,x,1,2,3", "got 5 fields"),
        ("a.png,x,5,5,1,1", "0 <= xmin < xmax"),
        ("a.png,x,a,b,c,d", "not four numbers"),
        ("../secret.png,x", "relative to the dataset uri"),
        ("s3://other/a.png,x", "relative to the dataset uri"),
    ],
)
def test_malformed_manifest_rows_are_refused_with_the_line(tmp_path: Path, row: str, expected: str) -> None:
    write_manifest(tmp_path, f"ok.png,x\nok2.png,y\n{row}\n", [])

    with pytest.raises(TrainerError) as caught:
        discover(spec(tmp_path, layout="manifest", manifest="labels.csv"), LocalStorage(str(tmp_path)))

    assert caught.value.reason == FailureReason.INVALID_SPEC
    assert "line 3" in caught.value.message
    assert expected in caught.value.message


def test_missing_manifest_is_dataset_not_found(tmp_path: Path) -> None:
    with pytest.raises(TrainerError) as caught:
        discover(spec(tmp_path, layout="manifest", manifest="labels.csv"), LocalStorage(str(tmp_path)))

    assert caught.value.reason == FailureReason.DATASET_NOT_FOUND
    assert "labels.csv" in caught.value.message


def test_record_is_json_and_names_labels(tmp_path: Path) -> None:
    make_folders(tmp_path, {"a": 10, "b": 10})

    splits = discover(spec(tmp_path, seed=3), LocalStorage(str(tmp_path)))
    record = json.loads(json.dumps(splits.record()))

    assert record["classes"] == ["a", "b"]
    assert record["seed"] == 3
    assert record["counts"] == splits.counts
    assert {row["key"] for row in record["train"]} == set(keys(splits.train))
    assert all(row["label"] == row["key"].split("/")[0] for row in record["test"])


def test_splits_record_round_trips_boxes() -> None:
    splits = DatasetSplits(
        classes=["a", "b"], train=[Example("k.png", 1, (0, 1, 2, 3))], validation=[], test=[]
    )

    assert splits.record()["train"] == [{"key": "k.png", "label": "b", "box": [0, 1, 2, 3]}]
