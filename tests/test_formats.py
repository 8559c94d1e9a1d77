"""The 13 benchmarks read through their own readers (and scored, where no judge is needed), and the training
mixtures built, from files in the upstream formats: tests/fixtures/formats/<folder>/ is laid out as `cumo
download eval_<name>` puts it under <data_root>/eval/<folder>/, and training/ as the training sources put their
JSONs under the data root, in the schema of the files upstream publishes (SOURCES.md beside the fixtures says
which file at which commit each follows, and what in them is ours). The expected values below are read off
the fixture files by hand, not off the readers. Images are generated here, named as the files name them."""

import io
import json
import math
import random
import shutil
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

from cumo.data.download import SOURCES, load_sources
from cumo.data.mixture import build_mixture, under_data_root
from cumo.data.skips import SkipCounter
from cumo.data.sources import read_json
from cumo.data.synthetic_benchmarks import MATHVISTA_FEATURES, MMMU_FEATURES, Writer
from cumo.eval.benchmarks import get
from cumo.eval.benchmarks.mmvet import capability_scores
from cumo.eval.benchmarks.pope import LABEL_COMMIT
from cumo.eval.metrics.mmmu import SUBJECTS
from tests.predictions import answered

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
GENERATED = "<generated>"  # an image cell of a parquet fixture: the bytes are made here
PARQUET_FEATURES = {"MMMU": MMMU_FEATURES, "mathvista": MATHVISTA_FEATURES}


def image_bytes(suffix: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 40, 40)).save(buffer, format="JPEG" if suffix == ".jpg" else "PNG")
    return buffer.getvalue()


def with_images(value):
    """A parquet row with every generated image cell filled with PNG bytes."""
    if isinstance(value, dict):
        if value.get("bytes") == GENERATED:
            return {**value, "bytes": image_bytes(".png")}
        return {key: with_images(item) for key, item in value.items()}
    return value


def laid_out(name: str, tmp_path: Path) -> Path:
    """The benchmark's fixture copied to <tmp_path>/eval/<folder>, parquet rows (`*.parquet.json`) written as
    the Hub's parquet files, and an image at every path its questions name."""
    benchmark = get(name)
    folder = tmp_path / "eval" / benchmark.folder
    shutil.copytree(FIXTURES / benchmark.folder, folder)
    writer = Writer(folder, random.Random(0), image_size=4)
    for rows_file in sorted(folder.rglob("*.parquet.json")):
        rows = [with_images(row) for row in json.loads(rows_file.read_text())]
        writer.parquet(
            rows_file.relative_to(folder).as_posix().removesuffix(".json"),
            rows,
            PARQUET_FEATURES[benchmark.folder],
        )
        rows_file.unlink()
    for question in benchmark.questions(folder):
        if isinstance(question.image, Path):
            question.image.parent.mkdir(parents=True, exist_ok=True)
            question.image.write_bytes(image_bytes(question.image.suffix))
    return folder


def ids(questions) -> list:
    return [question.question_id for question in questions]


# -- Multiple choice and short answers, scored by rule --------------------------------------------------------


def test_sqa(tmp_path):
    folder = laid_out("sqa", tmp_path)
    questions = get("sqa").questions(folder)
    assert ids(questions) == ["12", "31", "57"]
    assert [q.image for q in questions] == [
        None,
        folder / "images/test/31/image.png",
        folder / "images/test/57/image.png",
    ]
    assert questions[1].text == (
        "Context: Figure: a desert fox.\nWhich animal's ears are also adapted to lose heat?\nA. gray wolf\n"
        "B. black-tailed jackrabbit\nC. snowy owl" + LETTER
    )
    assert questions[2].load_image().size == (4, 4)
    # problems.json's answers: 12 -> 0 (A), 31 -> 1 (B), 57 -> 1 (B).
    result = get("sqa").score(folder, answered(questions, ["A", "B", "C"]))
    assert result.headline == 50.0 and result.metrics["accuracy"] == pytest.approx(200 / 3)
    assert result.metrics["questions_img"] == 2 and result.n == 2


def test_textvqa(tmp_path):
    folder = laid_out("textvqa", tmp_path)
    questions = get("textvqa").questions(folder)
    # LLaVA's ids are the image's; TextVQA's own, found by (image, question), are 34600, 34601, 34602.
    assert ids(questions) == [34600, 34601, 34602]
    assert [q.metadata["image_id"] for q in questions] == ["0a1b2c3d4e5f6789"] * 2 + ["fedcba9876543210"]
    assert questions[2].image == folder / "train_images/fedcba9876543210.jpg"
    assert questions[0].text == "What brand is the soda?\nReference OCR token: COLA, Zing, 330ml" + SHORT
    # "cola" is one of the ten answers: 9 annotators see one match (1/3), the one who said it none.
    result = get("textvqa").score(folder, answered(questions, ["cola", "330", "Stop."]))
    assert result.headline == pytest.approx(100 * (0.3 + 1 + 1) / 3)


def test_gqa(tmp_path):
    folder = laid_out("gqa", tmp_path)
    questions = get("gqa").questions(folder)
    assert ids(questions) == ["20968379", "20968380", "201307253"]
    assert (
        questions[0].image == folder / "data/images/n288870.jpg"
        and questions[0].text == "Is the sky cloudy?" + SHORT
    )
    # Answers: no (verify, attr), umbrella (query, rel), red (query, attr).
    result = get("gqa").score(folder, answered(questions, ["No.", "Umbrella", "blue"]))
    assert result.headline == pytest.approx(200 / 3)
    metrics = result.metrics
    assert (metrics["binary"], metrics["open"]) == (100.0, 50.0)
    assert (metrics["semantic/attr"], metrics["semantic/rel"]) == (50.0, 100.0)
    assert metrics["balanced_questions"] == 3


def test_pope(tmp_path):
    folder = laid_out("pope", tmp_path)
    questions = get("pope").questions(folder)
    # LLaVA's file: adversarial, then random, then popular, ids numbered from 1, 10000001, 20000001.
    assert ids(questions) == [1, 2, 10000001, 10000002, 20000001, 20000002]
    settings = [q.metadata["category"] for q in questions]
    assert settings == ["adversarial", "adversarial", "random", "random", "popular", "popular"]
    assert questions[1].text == "Is there a cat in the imange?" + SHORT  # the typo both files share
    assert questions[0].image == folder / "val2014/COCO_val2014_000000000042.jpg"
    # Labels: yes, no in every setting.
    assert get("pope").score(folder, answered(questions, ["Yes", "No"] * 3)).headline == 100.0
    always_yes = get("pope").score(folder, answered(questions, ["Yes"] * 6))
    assert always_yes.metrics["random"]["precision"] == 50.0 and always_yes.headline == pytest.approx(200 / 3)


@pytest.mark.parametrize(
    ("label_file", "change"),
    [
        # AoiDragon/POPE after e3e39262 holds 3,000 random questions where LLaVA asks 2,910 ...
        (
            "coco_pope_random.json",
            lambda lines: [*lines, lines[-1].replace('"question_id": 2', '"question_id": 3')],
        ),
        # ... and "Fix spelling errors" rewords lines LLaVA's file has as they were.
        ("coco_pope_adversarial.json", lambda lines: [line.replace("imange", "image") for line in lines]),
    ],
)
def test_pope_refuses_label_files_of_another_commit(tmp_path, label_file, change):
    folder = laid_out("pope", tmp_path)
    questions = get("pope").questions(folder)
    path = folder / "coco" / label_file
    path.write_text("".join(line + "\n" for line in change(path.read_text().splitlines())))
    with pytest.raises(
        ValueError, match=rf"{path}.*AoiDragon/POPE's output/coco files at commit {LABEL_COMMIT}"
    ):
        get("pope").score(folder, answered(questions, ["Yes", "No"] * 3))


def test_mme(tmp_path):
    folder = laid_out("mme", tmp_path)
    questions = get("mme").questions(folder)
    release = folder / "MME_Benchmark_release_version"
    assert ids(questions) == [
        "code_reasoning/0001.png#1", "code_reasoning/0001.png#2",
        "artwork/images/10002.jpg#1", "artwork/images/10002.jpg#2",
        "color/000000000139.jpg#1", "color/000000000139.jpg#2",
    ]  # fmt: skip
    # artwork, like four other subtasks, has images/ beside questions_answers_YN/.
    assert questions[2].image == release / "artwork/images/10002.jpg"
    # Truth: Yes, No per image; color's first line has the release's two spaces before the yes/no request.
    truth = ["Yes", "No", "Yes", "No", "No", "Yes"]
    result = get("mme").score(folder, answered(questions, truth))
    assert (result.headline, result.metrics["cognition"]) == (400.0, 200.0)  # artwork + color; code_reasoning
    wrong_on_color = get("mme").score(folder, answered(questions, truth[:5] + ["No"]))
    assert wrong_on_color.metrics["color"]["score"] == 50.0 and wrong_on_color.headline == 250.0


@pytest.mark.parametrize(
    ("name", "first", "instruction"),
    [
        (
            "mmbench",
            "What colour is the square?\nA. red\nB. blue\nC. green",
            "Answer with the option's letter from the given choices directly.",
        ),
        ("mmbench_cn", "正方形是什么颜色？\nA. 红色\nB. 蓝色\nC. 绿色", "请直接回答选项字母。"),
    ],
)
def test_mmbench(tmp_path, name, first, instruction):
    folder = laid_out(name, tmp_path)
    questions = get(name).questions(folder)
    assert ids(questions) == [7, 241, 1000007, 1000241, 2000007]  # the questions, then each rotation
    assert questions[0].text == f"{first}\n{instruction}"  # D is empty: three options
    # The hint on two lines with a blank one between, the question, two options (C is empty), the instruction.
    lines = questions[1].text.split("\n")
    assert len(lines) == 7 and lines[1] == "" and lines[4].startswith("A. ") and lines[5].startswith("B. ")
    assert lines[3] in ("Which question can the experiment answer?", "这个实验能回答哪个问题？")
    assert questions[0].load_image().getpixel((0, 0)) == (200, 30, 30)  # the base64 PNG of the row
    answers = ["A", "A", "C", "B", "B"]
    assert get(name).score(folder, answered(questions, answers)).headline == 100.0
    one_rotation_wrong = get(name).score(folder, answered(questions, answers[:4] + ["A"]))
    assert one_rotation_wrong.headline == 50.0 and one_rotation_wrong.metrics["miss"] == 1


def test_seed(tmp_path):
    folder = laid_out("seed", tmp_path)
    questions = get("seed").questions(folder)
    assert ids(questions) == ["101669", "88217", "45"]  # the video question v1738 is left out
    assert questions[0].image == folder / "SEED-Bench-image/1454426_2591111986.jpg"
    assert questions[2].text.endswith("D. Sleepy" + LETTER)
    # Answers C, C, A; dimensions 5, 6, 1.
    result = get("seed").score(folder, answered(questions, ["C", "A", "A"]))
    assert result.headline == pytest.approx(200 / 3)
    assert result.metrics["dimension"] == {
        "Scene Understanding": 100.0,
        "Instances Counting": 100.0,
        "Spatial Relation": 0.0,
    }


def test_mmmu(tmp_path):
    folder = laid_out("mmmu", tmp_path)  # three subjects with questions; the other 27 shards hold none here
    assert sorted(path.name for path in folder.iterdir() if path.name != "eval") == sorted(SUBJECTS)
    questions = get("mmmu").questions(folder)
    assert ids(questions) == [
        "validation_Accounting_1", "validation_Accounting_2",
        "validation_Basic_Medical_Science_10", "validation_Chemistry_30",
    ]  # fmt: skip
    assert questions[0].text == (
        "A shop buys 40 pens at $2 each and sells all of them for $360. What is its profit per pen?\n"
        "(A) $6\n(B) $7\n(C) $8\n(D) $9\n\nAnswer with the option's letter from the given choices directly"
    )
    assert questions[1].image is None and questions[0].metadata["options"] == ["$6", "$7", "$8", "$9"]
    # answer_dict_val.json: B, B; an open question whose answer is the letter C; one with two accepted answers.
    result = get("mmmu").score(folder, answered(questions, ["B", "A", "C", "The product is MgS."]))
    assert result.headline == 75.0 and result.n == 4
    assert result.metrics["subject"]["Accounting"]["accuracy"] == 50.0
    assert result.metrics["subject"]["Chemistry"]["accuracy"] == 100.0


def test_mathvista(tmp_path):
    folder = laid_out("mathvista", tmp_path)
    questions = get("mathvista").questions(folder)
    assert ids(questions) == ["1", "2", "3"]
    assert questions[1].text == "what is the total volume of the jug?"  # `question`, not the hinted `query`
    assert Image.open(io.BytesIO(questions[0].image)).size == (4, 4)
    # Answers 1.2 (float, one decimal: the Hub's precision 1.0), 1000, "square"; all read by the rules.
    result = get("mathvista").score(folder, answered(questions, ["1.3", "1000", "square"]))
    assert result.headline == 66.67 and result.metrics["extracted_by"]["rule"] == 3  # CuMo's two decimals
    # lupantech's data/testmini.json, the file calculate_score.py falls back on, holds the same answers.
    truth = read_json(folder / "data/testmini.json")
    assert [truth[pid]["answer"] for pid in ids(questions)] == ["1.2", "1000", "square"]
    assert truth["1"]["precision"] == 1 and "query" not in truth["1"]


def test_vqav2(tmp_path):
    folder = laid_out("vqav2", tmp_path)
    vqav2 = get("vqav2")
    questions = vqav2.questions(folder)
    assert ids(questions) == [262144000, 262144001]
    assert questions[0].image == folder / "test2015/COCO_test2015_000000262144.jpg"
    assert math.isnan(vqav2.score(folder, answered(questions, ["yes", "Baseball."])).headline)
    (sheet,) = vqav2.submission(folder, answered(questions, ["yes", "Baseball."]), tmp_path / "out")
    assert json.loads(sheet.read_text()) == [
        {"question_id": 262144000, "answer": "yes"},
        {"question_id": 262144001, "answer": "baseball"},
        {"question_id": 262145002, "answer": ""},  # test-standard: in the test file, not asked
    ]
    val = vqav2.at_split("val")
    asked = val.questions(folder)
    assert (
        ids(asked) == [42000, 42001, 73000]
        and asked[0].image == folder / "val2014/COCO_val2014_000000000042.jpg"
    )
    # The humans of 42000 disagree (dog x2, the dog x4, a dog x3, puppy): their articles go, nine say "dog".
    assert val.score(folder, answered(asked, ["Dog", "two", "No"])).headline == 100.0
    # "puppy": one match; nine annotators see it once (1/3), the one who said it never.
    result = val.score(folder, answered(asked, ["puppy", "2", "no"]))
    assert result.metrics["other"] == pytest.approx(30.0) and result.metrics["yes/no"] == 100.0


# -- Judged benchmarks: the readers, and what the judge is given ----------------------------------------------


def test_mmvet(tmp_path):
    folder = laid_out("mmvet", tmp_path)
    questions = get("mmvet").questions(folder)
    assert ids(questions) == [0, 1, 2]
    # Questions 1 and 2 ask about the same image, as LLaVA's file and mm-vet.json's imagename have it.
    assert [q.image.name for q in questions] == ["v1_0.png", "v1_1.png", "v1_1.png"]
    assert questions[0].image.parent == folder / "mm-vet/images"
    annotations = read_json(folder / "mm-vet/mm-vet.json")
    scores = capability_scores(annotations, [{"v1_0": 1.0, "v1_1": 0.5, "v1_2": 0.0}])
    assert scores["total"] == 50.0
    assert scores["capabilities"] == {"ocr": 50.0, "math": 100.0, "rec": 50.0, "spat": 50.0}
    assert scores["capability_integrations"] == {"math_ocr": 100.0, "ocr": 0.0, "ocr_rec_spat": 50.0}


class ReviewsEightSix:
    """A judge that rates GPT-4's answer 8 and the model's 6, and keeps what it was asked."""

    model, runs = "test-judge", 1

    def __init__(self):
        self.asked = []

    def complete(self, messages, **_):
        self.asked.append(messages[-1]["content"])
        return "8 6\nThe first answer is more specific."

    def give_ups(self, what):
        return SkipCounter(what, max_share=0.0)


def test_llava_wild(tmp_path):
    folder = laid_out("llava_wild", tmp_path)
    questions = get("llava_wild").questions(folder)
    assert ids(questions) == [0, 1, 2]
    assert [q.metadata["category"] for q in questions] == ["conv", "detail", "complex"]
    assert questions[2].image == folder / "images/002.jpg"
    judge = ReviewsEightSix()
    result = get("llava_wild").score(
        folder, answered(questions, ["A bridge.", "A bridge at dusk.", "Pie."]), judge=judge
    )
    assert result.headline == 75.0 and result.metrics["complex"]["relative"] == 75.0
    # context.jsonl's caption: one string for 001.jpg, a list joined line by line for 002.jpg.
    assert judge.asked[0].startswith("[Context]\nA red suspension bridge over a bay at sunset")
    assert judge.asked[2].startswith(
        "[Context]\nA kitchen table with flour, eggs and butter.\nA rolling pin lies beside a bowl.\n\n[Question]"
    )
    assert (
        "[Assistant 1]\nFlour, eggs, butter and a rolling pin point to pastry or cookies." in judge.asked[2]
    )


# -- Training mixtures: the published JSONs' image paths against where the sources put their files -------------

# file under training/ -> (the folder its image paths are relative to, entries per source as counted by hand)
MIXTURES = {
    "llava/llava_pretrain/blip_laion_cc_sbu_558k.json": ("llava/llava_pretrain/images", {"llava": 2}),
    "jsons/llava_v1_5_mix665k.json": (
        "",
        {"coco": 1, "gqa": 1, "ocr_vqa": 1, "textvqa": 1, "vg": 1, "text": 1},
    ),
    "sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json": (
        "",
        {"llava": 1, "sam": 1, "share_textvqa": 1, "web-celebrity": 1, "wikiart": 1},
    ),
    "jsons/cumo_pft_allava.json": ("", {"ALLaVA": 2}),
}


@pytest.mark.parametrize("mixture", MIXTURES)
def test_training_mixture(tmp_path, mixture):
    image_folder, composition = MIXTURES[mixture]
    entries = read_json(FIXTURES / "training" / mixture)
    images = [under_data_root(entry.get("image"), image_folder) for entry in entries]
    folders = [source.folder for source in load_sources(SOURCES).values()]
    for image in filter(None, images):  # each lies in the folder cumo/data/sources.yaml gives a source
        assert any(PurePosixPath(image).is_relative_to(folder) for folder in folders), image
        (tmp_path / "data" / image).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / image).write_bytes(image_bytes(Path(image).suffix))
    stats = build_mixture(
        [FIXTURES / "training" / mixture],
        tmp_path / "mixture.arrow",
        tmp_path / "mixture.stats.json",
        tmp_path / "data",
        image_folder=image_folder,
        verify_images=True,
        max_skipped_share=0.0,
    )
    assert stats["entries"]["kept"] == len(entries)
    assert {source: counts["kept"] for source, counts in stats["composition"].items()} == composition
