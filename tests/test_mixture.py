"""Mixtures: the streaming JSON reader, every entry check, drops counted by reason, the threshold, the Arrow form."""

import json

import pytest
from datasets import Features, Value
from datasets.arrow_writer import ArrowWriter
from PIL import Image

from cumo.data import mixture_store
from cumo.data.mixture import (
    BAD_CONVERSATIONS,
    BAD_ID,
    BAD_IMAGE_PATH,
    DUPLICATE_ENTRY,
    MISPLACED_IMAGE_TOKEN,
    MISSING_IMAGE,
    NOT_AN_OBJECT,
    UNDECODABLE_IMAGE,
    UNKNOWN_IMAGE_ROOT,
    build_mixture,
    entry_problem,
)
from cumo.data.mixture_store import FEATURES, MalformedMixture, iter_json_array, open_mixture
from cumo.data.skips import TooManySkipped


def entry(entry_id, image=None, turns=("What is it?", "A cat.")):
    """A LLaVA entry; with an image, the first human turn carries the image token."""
    conversations = [
        {"from": "human" if number % 2 == 0 else "gpt", "value": value} for number, value in enumerate(turns)
    ]
    if image is not None:
        conversations[0]["value"] = "<image>\n" + conversations[0]["value"]
        return {"id": entry_id, "image": image, "conversations": conversations}
    return {"id": entry_id, "conversations": conversations}


def write_json(path, value):
    path.write_text(json.dumps(value))
    return path


def touch(data_root, *images):
    for image in images:
        (data_root / image).parent.mkdir(parents=True, exist_ok=True)
        (data_root / image).touch()


def build(tmp_path, entries, **options):
    """Build the mixture `entries` (JSON-written) under tmp_path: (stats, path of the Arrow file)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    inputs = [write_json(tmp_path / "mixture.json", entries)]
    out, stats = tmp_path / "mixture.arrow", tmp_path / "results" / "mixture.stats.json"
    return build_mixture(inputs, out, stats, tmp_path / "data", **options), out


def ocr_vqa_mixture(tmp_path, entries: int, missing: int):
    """`entries` OCR-VQA entries whose first `missing` images were never downloaded."""
    images = [f"ocr_vqa/images/{number}.jpg" for number in range(entries)]
    touch(tmp_path / "data", *images[missing:])
    return [entry(f"ocr{number}", image) for number, image in enumerate(images)]


# The JSON reader


def test_json_reader_streams_entries_across_chunk_edges(tmp_path, monkeypatch):
    monkeypatch.setattr(mixture_store, "CHUNK_CHARS", 7)  # every value straddles a window edge
    value = [1, 23456789, -3.5e10, {"a": [1, {"b": None}]}, "x\u00e9y \u6f22 \U0001f600", [], {}, True]
    path = tmp_path / "m.json"
    path.write_text(" \n" + json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    assert list(iter_json_array(path)) == value
    assert list(iter_json_array(write_json(tmp_path / "empty.json", []))) == []
    (tmp_path / "bom.json").write_text("\ufeff[1]", encoding="utf-8")  # as some Windows tools write it
    assert list(iter_json_array(tmp_path / "bom.json")) == [1]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"id": "a"}', r"not a JSON array \(starts with '{.id.: .a.}'\)"),
        ("", "not a JSON array"),
        (
            '[{"id": "a"}, {"id": "b", "conv',
            r"entry #1 is not valid JSON: Unterminated string starting at character 26, line 1",
        ),
        (
            '[{"id": "a"}\n{"id": "b"}]',
            r"expected ',' or '\]' after entry #0, found '\{' at character 13, line 2",
        ),
        ('[{"id": "a"},]', r"entry #1 is not valid JSON"),
        ('[{"id": "a"}] [', r"text after the closing '\]'"),
    ],
)
def test_json_reader_names_file_entry_and_position_of_malformed_json(tmp_path, text, message):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(MalformedMixture, match=message) as error:
        list(iter_json_array(path))
    assert str(error.value).startswith(str(path))


# One entry's checks


@pytest.mark.parametrize(
    "bad, reason, detail",
    [
        (["not", "an", "object"], NOT_AN_OBJECT, "a JSON list"),
        ({"conversations": entry("x")["conversations"]}, BAD_ID, "id None"),
        (entry(True), BAD_ID, "id True"),
        (entry(""), BAD_ID, "id ''"),
        (entry("x", image="/abs/a.jpg"), BAD_IMAGE_PATH, "'/abs/a.jpg'"),
        (entry("x", image="coco/../../etc/passwd"), BAD_IMAGE_PATH, "relative to the data root"),
        (entry("x") | {"image": ["a.jpg", "b.jpg"]}, BAD_IMAGE_PATH, "one path"),
        ({"id": "x", "conversations": []}, BAD_CONVERSATIONS, "non-empty list"),
        ({"id": "x"}, BAD_CONVERSATIONS, "non-empty list"),
        ({"id": "x", "conversations": [{"from": "human"}]}, BAD_CONVERSATIONS, "turn 0"),
        ({"id": "x", "conversations": [{"from": "human", "value": 3}]}, BAD_CONVERSATIONS, "turn 0"),
        (
            {"id": "x", "conversations": [{"from": "gpt", "value": "a"}]},
            BAD_CONVERSATIONS,
            "turn 0 is from 'gpt'",
        ),
        (
            {"id": "x", "conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]},
            BAD_CONVERSATIONS,
            "turn 1 is from 'human', 'gpt' is expected",
        ),
        (entry("x", turns=("<image> q", "a")), MISPLACED_IMAGE_TOKEN, "none in a text-only entry"),
        (entry("x", "coco/a.jpg", turns=("<image> q", "a")), MISPLACED_IMAGE_TOKEN, "{0: 2}"),
        (entry("x", "coco/a.jpg", turns=("q", "<image> a")), MISPLACED_IMAGE_TOKEN, "{0: 1, 1: 1}"),
        (
            {"id": "x", "image": "coco/a.jpg", "conversations": entry("x")["conversations"]},
            MISPLACED_IMAGE_TOKEN,
            "{}",
        ),
    ],
)
def test_entry_problem_names_the_reason_and_what_is_wrong(bad, reason, detail):
    found_reason, found_detail = entry_problem(bad)
    assert found_reason == reason
    assert detail in found_detail


def test_entry_problem_accepts_llava_entries():
    assert (
        entry_problem(entry("000000033471", "coco/train2017/000000033471.jpg", ("q", "a", "q2", "a2")))
        is None
    )
    assert entry_problem(entry(7, turns=("hello",))) is None  # integer ids; a trailing human turn
    assert entry_problem(entry("x", turns=("q", "a")) | {"image": None, "model": "gpt-4"}) is None


# Building a mixture


def test_build_writes_rows_and_composition(tmp_path):
    data = tmp_path / "data"
    touch(data, "coco/train2017/1.jpg", "ocr_vqa/images/2.jpg")
    entries = [
        entry("1", "coco/train2017/1.jpg", ("Describe it.", "A big red bus.", "Color?", "Red")),
        entry(2, "ocr_vqa/images/2.jpg"),
        entry("t1", turns=("Tell me a joke", "No.")),
        entry("1", "coco/train2017/1.jpg", ("Another question", "about the same image")),
    ]
    stats, out = build(tmp_path, entries)

    dataset = open_mixture(out)
    assert dataset.features == FEATURES
    assert dataset[0] == {
        "id": "1",
        "image": "coco/train2017/1.jpg",
        "conversations": entries[0]["conversations"],
        "num_words": 9,  # "<image>" counts as a word, as in LLaVA's length estimate
        "source": "coco",
    }
    assert dataset["id"] == ["1", "2", "t1", "1"]
    assert dataset["image"][2] is None and dataset["source"] == ["coco", "ocr_vqa", "text", "coco"]
    assert stats["entries"] == {"seen": 4, "kept": 4, "shared_ids": 1}
    assert stats["composition"] == {
        "coco": {"seen": 2, "kept": 2},
        "ocr_vqa": {"seen": 1, "kept": 1},
        "text": {"seen": 1, "kept": 1},
    }
    assert json.loads((tmp_path / "results" / "mixture.stats.json").read_text()) == stats


def test_missing_ocr_vqa_images_under_the_threshold_are_counted_drops(tmp_path):
    # LLaVA-665K's 355 missing OCR-VQA images are 0.05% of it: under the default 0.1%.
    stats, out = build(tmp_path, ocr_vqa_mixture(tmp_path, entries=4000, missing=3))
    assert stats["skipped"]["by_reason"] == {MISSING_IMAGE: 3}
    assert [offender["id"] for offender in stats["skipped"]["first"]] == ["ocr0", "ocr1", "ocr2"]
    assert stats["skipped"]["first"][0]["detail"] == "ocr_vqa/images/0.jpg [mixture.json entry #0]"
    assert stats["entries"]["kept"] == len(open_mixture(out)) == 3997
    assert stats["composition"]["ocr_vqa"] == {"seen": 4000, "kept": 3997}


def test_missing_images_over_the_threshold_fail_naming_the_entries(tmp_path):
    with pytest.raises(TooManySkipped, match=r"skipped 5 of 4000 \(missing image: 5\)") as error:
        build(tmp_path, ocr_vqa_mixture(tmp_path, entries=4000, missing=5))
    assert "ocr4: missing image ocr_vqa/images/4.jpg [mixture.json entry #4]" in str(error.value)
    assert "mixture.json" in str(error.value).splitlines()[0]
    assert not (tmp_path / "mixture.arrow").exists()  # no partial output for the workflow to take
    assert not list(tmp_path.glob("*.partial"))
    stats = json.loads((tmp_path / "results" / "mixture.stats.json").read_text())
    assert stats["skipped"]["by_reason"] == {MISSING_IMAGE: 5}  # the counts stay for whoever fixes it


def test_threshold_is_configurable(tmp_path):
    stats, _ = build(tmp_path, ocr_vqa_mixture(tmp_path, entries=100, missing=5), max_skipped_share=0.05)
    assert stats["skipped"]["skipped"] == 5 and stats["skipped"]["max_share"] == 0.05


def test_every_drop_is_counted_by_reason_with_its_file_and_index(tmp_path):
    touch(tmp_path / "data", "coco/1.jpg")
    entries = [
        entry("good", "coco/1.jpg"),
        entry("good", "coco/1.jpg"),  # the same entry again: a source listed twice
        entry("lost", "textvqa/1.jpg"),  # no textvqa folder was downloaded
        {"conversations": []},
        entry("token", turns=("<image> what?", "this")),
    ]
    stats, out = build(tmp_path, entries, max_skipped_share=1.0)
    assert len(open_mixture(out)) == 1
    assert stats["skipped"]["by_reason"] == {
        DUPLICATE_ENTRY: 1,
        UNKNOWN_IMAGE_ROOT: 1,
        BAD_ID: 1,
        MISPLACED_IMAGE_TOKEN: 1,
    }
    first = {offender["reason"]: offender for offender in stats["skipped"]["first"]}
    assert first[BAD_ID]["id"] == "#3"  # no usable id: the entry's index stands for it
    assert first[UNKNOWN_IMAGE_ROOT]["detail"].startswith(f"{tmp_path / 'data' / 'textvqa'} does not exist")
    assert first[DUPLICATE_ENTRY]["detail"].endswith("[mixture.json entry #1]")


def test_malformed_file_fails_with_file_and_entry(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "mixture.json"
    path.write_text('[{"id": "a", "conversations": []}, {"id": "b"')
    with pytest.raises(MalformedMixture, match=r"mixture.json: entry #1 is not valid JSON"):
        build_mixture([path], tmp_path / "m.arrow", tmp_path / "m.stats.json", tmp_path / "data")
    assert not (tmp_path / "m.arrow").exists()


def test_missing_data_root_fails_saying_what_to_set(tmp_path):
    path = write_json(tmp_path / "mixture.json", [])
    with pytest.raises(FileNotFoundError, match="set data_root in the config"):
        build_mixture([path], tmp_path / "m.arrow", tmp_path / "s.json", tmp_path / "nowhere")


def test_image_folder_makes_paths_relative_to_the_data_root(tmp_path):
    # The pretrain file's paths are relative to llava/llava_pretrain/images (CuMo's pretrain script).
    touch(tmp_path / "data", "llava/llava_pretrain/images/00453/004539375.jpg")
    stats, out = build(
        tmp_path, [entry("004539375", "00453/004539375.jpg")], image_folder="llava/llava_pretrain/images"
    )
    assert open_mixture(out)[0]["image"] == "llava/llava_pretrain/images/00453/004539375.jpg"
    assert stats["composition"] == {"llava": {"seen": 1, "kept": 1}}


def test_several_sources_are_built_next_to_the_published_composition(tmp_path):
    data = tmp_path / "data"
    touch(data, "coco/1.jpg", "sam/2.jpg")
    coco = write_json(tmp_path / "coco.json", [entry("1", "coco/1.jpg")])
    sam = write_json(tmp_path / "sam.json", [entry("2", "sam/2.jpg")])
    published = write_json(
        tmp_path / "published.json", [entry("1", "coco/1.jpg"), entry("1", "coco/1.jpg"), entry("t")]
    )
    stats = build_mixture(
        [coco, sam], tmp_path / "sft.arrow", tmp_path / "sft.stats.json", data, reference=published
    )
    assert stats["inputs"] == [str(coco), str(sam)]
    assert stats["composition"] == {
        "coco": {"seen": 1, "kept": 1, "published": 2},
        "sam": {"seen": 1, "kept": 1, "published": 0},
        "text": {"seen": 0, "kept": 0, "published": 1},
    }


def test_verify_images_drops_undecodable_ones(tmp_path):
    data = tmp_path / "data"
    touch(data, "coco/broken.jpg")
    (data / "coco" / "broken.jpg").write_bytes(b"not an image")
    Image.new("RGB", (4, 4), "red").save(data / "coco" / "good.png")
    entries = [entry("g", "coco/good.png"), entry("b", "coco/broken.jpg"), entry("g2", "coco/good.png")]
    stats, out = build(tmp_path, entries, verify_images=True, max_skipped_share=0.5)
    assert open_mixture(out)["id"] == ["g", "g2"]
    assert stats["skipped"]["by_reason"] == {UNDECODABLE_IMAGE: 1}
    assert stats["skipped"]["first"][0]["detail"].startswith("coco/broken.jpg: UnidentifiedImageError")
    assert stats["composition"]["coco"] == {"seen": 3, "kept": 2}


def test_open_mixture_refuses_other_columns(tmp_path):
    path = tmp_path / "other.arrow"
    with ArrowWriter(path=str(path), features=Features({"id": Value("string")})) as writer:
        writer.write({"id": "a"})
        writer.finalize()
    with pytest.raises(ValueError, match="Rebuild it with `cumo mixture build`"):
        open_mixture(path)


@pytest.mark.parametrize("chunk", [7, 1 << 22])  # decoded far ahead of the entries, or within one
def test_bytes_that_are_not_utf8_name_the_file_and_entry(tmp_path, monkeypatch, chunk):
    """Before: `'utf-8' codec can't decode byte ...` with neither file nor entry (issue 17)."""
    monkeypatch.setattr(mixture_store, "CHUNK_CHARS", chunk)
    entries = [entry(f"e{i}", turns=("What is it?", f"Answer {i}.")) for i in range(50)]
    text = json.dumps(entries, indent=1).encode()
    cut = text.index(b"Answer 31.")
    path = tmp_path / "m.json"
    path.write_bytes(text[:cut] + b"\xe6\x97" + text[cut:])  # half of a 3-byte character
    with pytest.raises(MalformedMixture, match=rf"{path}: entry #31 holds bytes that are not UTF-8") as error:
        list(iter_json_array(path))
    line = 1 + text[:cut].count(b"\n")
    assert f"at byte {cut}, line {line}: " in str(error.value) and "download it again" in str(error.value)


def test_the_cli_names_a_file_that_is_not_utf8_in_one_line(tmp_path):
    from cumo.cli import main

    (tmp_path / "data").mkdir()
    path = tmp_path / "m.json"
    path.write_bytes(json.dumps([entry("a")]).encode().replace(b"A cat.", b"A c\xff."))
    with pytest.raises(SystemExit) as stop:
        main(["mixture", str(path), "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "m.arrow"),
              "--stats", str(tmp_path / "m.stats.json")])  # fmt: skip
    assert str(stop.value.code).startswith(f"cumo mixture: {path}: entry #0 holds bytes that are not UTF-8")
    assert "\n" not in str(stop.value.code)


def test_verify_images_decodes_every_pixel(tmp_path):
    """A JPEG cut at 90% passes PIL's verify(); decoding it fails: a counted drop, not a crash in training."""
    data = tmp_path / "data"
    (data / "coco").mkdir(parents=True)
    Image.effect_noise((256, 256), 64).convert("RGB").save(data / "coco" / "whole.jpg", quality=95)
    jpeg = (data / "coco" / "whole.jpg").read_bytes()
    (data / "coco" / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 9 // 10])
    with Image.open(data / "coco" / "cut.jpg") as image:
        image.verify()  # what was checked before, and passes
    entries = [entry("w", "coco/whole.jpg"), entry("c", "coco/cut.jpg")]
    stats, out = build(tmp_path, entries, verify_images=True, max_skipped_share=0.5)
    assert open_mixture(out)["id"] == ["w"]
    assert stats["skipped"]["by_reason"] == {UNDECODABLE_IMAGE: 1}
    assert stats["skipped"]["first"][0]["detail"].startswith("coco/cut.jpg: OSError: image file is truncated")
