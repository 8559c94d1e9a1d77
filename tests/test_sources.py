"""The source modules' conversions and fetches, each on a small input written here in the source's own
format (as its page and files document it), checked against LLaVA's conversation schema."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cumo.data.skips import TooManySkipped
from cumo.data.sources import (
    MULTIPLE_CHOICE,
    SHORT_ANSWER,
    ai2d,
    allava,
    chartqa,
    docvqa,
    dvqa,
    infovqa,
    laion_gpt4v,
    lima,
    ocr_vqa,
    syndog_en,
)
from tests.servers import FileServer, local_only


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    local_only(monkeypatch)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def converted(module, data_root: Path, folder: str) -> dict[str, list[dict]]:
    outputs = {name: list(entries) for name, entries in module.convert(data_root, folder).items()}
    for entries in outputs.values():
        for entry in entries:
            assert_llava_entry(entry)
    return outputs


def assert_llava_entry(entry: dict) -> None:
    """LLaVA's schema: id, optional image relative to the data root, human/gpt turns alternating, `<image>`
    exactly once, at the front of the first human turn, when there is an image."""
    assert set(entry) <= {"id", "image", "conversations"} and isinstance(entry["id"], str)
    turns = entry["conversations"]
    assert [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
    assert all(isinstance(turn["value"], str) for turn in turns)
    placeholders = [turn["value"].count("<image>") for turn in turns]
    if "image" in entry:
        assert not entry["image"].startswith("/") and ".." not in entry["image"]
        assert turns[0]["value"].startswith("<image>\n") and placeholders == [1] + [0] * (len(turns) - 1)
    else:
        assert sum(placeholders) == 0


def turns(entry: dict) -> list[str]:
    return [turn["value"] for turn in entry["conversations"]]


def test_allava_entries_get_the_folder_in_front_of_their_image_paths(tmp_path):
    # Records as in https://github.com/FreedomIntelligence/ALLaVA#sample-demonstration
    def record(kind, source, number, image):
        return {
            "id": f"allava_{source}_{kind}_{number}",
            "image": image,
            "conversations": [
                {"from": "human", "value": "<image>\nPlease depict the image in words."},
                {"from": "gpt", "value": "A ring."},
            ],
            "original_caption": "190952cz Pandora Tropical Palm Leaf Ring",
            "url": "https://theartofpandora.com/ring.jpg",
        }

    laion, vflan = (
        "allava_laion/images/100277305.jpeg",
        "allava_vflan/images/images_191task_1k/PACS+guitar_830.png",
    )
    for kind, name in (("cap", "Caption"), ("inst", "Instruct")):
        write_json(
            tmp_path / f"ALLaVA/allava_laion/ALLaVA-{name}-LAION-4V.json", [record(kind, "laion", 1, laion)]
        )
        write_json(
            tmp_path / f"ALLaVA/allava_vflan/ALLaVA-{name}-VFLAN-4V.json", [record(kind, "vflan", 2, vflan)]
        )
    outputs = converted(allava, tmp_path, "ALLaVA")
    assert [e["image"] for e in outputs["allava_caption"]] == [f"ALLaVA/{laion}", f"ALLaVA/{vflan}"]
    assert [e["id"] for e in outputs["allava_instruct"]] == ["allava_laion_inst_1", "allava_vflan_inst_2"]


def test_docvqa_groups_a_pages_questions_with_the_first_answer(tmp_path):
    # train_v1.0_withQT.json of https://rrc.cvc.uab.es/?ch=17, image paths relative to train/
    write_json(
        tmp_path / "docvqa/train/train_v1.0_withQT.json",
        {
            "dataset_name": "docvqa",
            "dataset_split": "train",
            "data": [
                {
                    "questionId": 337,
                    "question": "what is the date?",
                    "question_types": ["handwritten"],
                    "image": "documents/xnbl0037_1.png",
                    "docId": 279,
                    "answers": ["1/8/93", "01/08/93"],
                    "data_split": "train",
                },
                {
                    "questionId": 338,
                    "question": "who signed it?",
                    "question_types": ["form"],
                    "image": "documents/xnbl0037_1.png",
                    "docId": 279,
                    "answers": ["Dr. Ray"],
                    "data_split": "train",
                },
                {
                    "questionId": 339,
                    "question": "what is the title?",
                    "question_types": ["layout"],
                    "image": "documents/pybv0228_81.png",
                    "docId": 280,
                    "answers": ["MEMO"],
                    "data_split": "train",
                },
            ],
        },
    )
    (first, second) = converted(docvqa, tmp_path, "docvqa")["docvqa"]
    assert first["image"] == "docvqa/train/documents/xnbl0037_1.png" and first["id"] == "docvqa_xnbl0037_1"
    assert turns(first) == [
        f"<image>\nwhat is the date?\n{SHORT_ANSWER}",
        "1/8/93",
        f"who signed it?\n{SHORT_ANSWER}",
        "Dr. Ray",
    ]
    assert turns(second)[1] == "MEMO"


def test_docvqa_record_without_answers_is_an_error_naming_file_and_record(tmp_path):
    path = write_json(
        tmp_path / "docvqa/train/train_v1.0.json", {"data": [{"question": "q?", "image": "documents/a.png"}]}
    )
    with pytest.raises(ValueError, match="record 0 has no 'answers'") as error:
        converted(docvqa, tmp_path, "docvqa")
    assert str(path) in str(error.value)


def test_infovqa_uses_the_local_image_name(tmp_path):
    # infographicsVQA_train_v1.0.json from the qas archive of https://rrc.cvc.uab.es/?ch=17 (task 3)
    write_json(
        tmp_path / "infovqa/infographicsvqa_qas/infographicsVQA_train_v1.0.json",
        {"dataset_name": "infographicVQA", "data": [
            {"questionId": 65718, "question": "Which social platform has heavy female audience?", "image_local_name": "37313.jpeg", "image_url": "https://example.org/37313.jpg", "ocr_output_file": "37313.json", "answers": ["pinterest"], "data_split": "train"},
        ]},
    )  # fmt: skip
    ((entry,),) = converted(infovqa, tmp_path, "infovqa").values()
    assert entry["image"] == "infovqa/infographicsvqa_images/37313.jpeg"
    assert turns(entry) == [
        f"<image>\nWhich social platform has heavy female audience?\n{SHORT_ANSWER}",
        "pinterest",
    ]


def test_chartqa_joins_human_and_augmented_questions_per_chart(tmp_path):
    # "ChartQA Dataset/train/train_{human,augmented}.json" of https://github.com/vis-nlp/ChartQA
    train = tmp_path / "chartqa/ChartQA Dataset/train"
    write_json(
        train / "train_human.json",
        [{"imgname": "41699051005347.png", "query": "How many bars?", "label": "3"}],
    )
    write_json(
        train / "train_augmented.json",
        [
            {"imgname": "41699051005347.png", "query": "Highest value?", "label": 57.4},
            {"imgname": "two.png", "query": "Year?", "label": "2019"},
        ],
    )
    first, second = converted(chartqa, tmp_path, "chartqa")["chartqa"]
    assert first["image"] == "chartqa/ChartQA Dataset/train/png/41699051005347.png"
    assert turns(first)[1::2] == ["3", "57.4"] and turns(second)[1] == "2019"


def test_dvqa_groups_the_questions_of_a_chart(tmp_path):
    # qa/train_qa.json of https://github.com/kushalkafle/DVQA_dataset
    write_json(
        tmp_path / "dvqa/qa/train_qa.json",
        [
            {
                "image": "bar_train_00000000.png",
                "question": "Does the chart contain stacked bars?",
                "answer": "no",
                "question_id": 0,
                "template_id": "structure",
                "answer_bbox": [],
            },
            {
                "image": "bar_train_00000000.png",
                "question": "How many bars are there?",
                "answer": 4,
                "question_id": 1,
                "template_id": "structure",
                "answer_bbox": [],
            },
        ],
    )
    ((entry,),) = converted(dvqa, tmp_path, "dvqa").values()
    assert entry["image"] == "dvqa/images/bar_train_00000000.png" and turns(entry)[1::2] == ["no", "4"]


def test_ai2d_asks_for_the_letter_and_leaves_the_test_split_out(tmp_path):
    # ai2d/questions/<id>.png.json of https://allenai.org/data/diagrams, test ids from ai2d_test_ids.csv
    def diagram(image_id, question_id):
        return {
            "imageName": f"{image_id}.png",
            "questions": {
                "Which stage comes after the egg?": {"abcLabel": False, "answerTexts": ["adult", "larva", "pupa", "nymph"], "correctAnswer": 1, "questionId": question_id},
            },
        }  # fmt: skip

    write_json(tmp_path / "ai2d/ai2d/questions/4.png.json", diagram(4, "4.png-0"))
    write_json(tmp_path / "ai2d/ai2d/questions/17.png.json", diagram(17, "17.png-0"))
    (tmp_path / "ai2d/ai2d_test_ids.csv").write_text("17\n203\n")
    ((entry,),) = converted(ai2d, tmp_path, "ai2d").values()
    assert entry["id"] == "ai2d_4.png-0" and entry["image"] == "ai2d/ai2d/images/4.png"
    assert turns(entry) == [
        f"<image>\nWhich stage comes after the egg?\nA. adult\nB. larva\nC. pupa\nD. nymph\n{MULTIPLE_CHOICE}",
        "B",
    ]


def test_lima_pairs_messages_into_text_only_turns_and_names_a_bad_line(tmp_path):
    # train.jsonl of https://huggingface.co/datasets/GAIR/lima
    path = tmp_path / "lima/train.jsonl"
    path.parent.mkdir()
    records = [
        {"conversations": ["Q1", "A1"], "source": "stackexchange"},
        {"conversations": ["Q1", "A1", "Q2", "A2"], "source": "multi_turn"},
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    first, second = converted(lima, tmp_path, "lima")["lima"]
    assert "image" not in first and turns(second) == ["Q1", "A1", "Q2", "A2"]
    path.write_text(path.read_text() + json.dumps({"conversations": ["unanswered"], "source": "x"}) + "\n")
    with pytest.raises(ValueError, match=f"{path}:3: 1 messages"):
        converted(lima, tmp_path, "lima")


def test_syndog_en_writes_the_images_out_of_the_parquet_shards(tmp_path):
    # data/train-*.parquet of https://huggingface.co/datasets/naver-clova-ix/synthdog-en
    shard = tmp_path / "syndog-en/data/train-00000-of-00084.parquet"
    shard.parent.mkdir(parents=True)
    rows = [
        {
            "image": {"bytes": b"\xff\xd8jpeg one", "path": None},
            "ground_truth": json.dumps({"gt_parse": {"text_sequence": "Hello world"}}),
        },
        {
            "image": {"bytes": b"\xff\xd8jpeg two", "path": None},
            "ground_truth": json.dumps({"gt_parse": {"text_sequence": "Second page"}}),
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), shard)
    first, second = converted(syndog_en, tmp_path, "syndog-en")["syndog_en"]
    assert first["image"] == "syndog-en/images/train-00000-of-00084-000000.jpg"
    assert (tmp_path / second["image"]).read_bytes() == b"\xff\xd8jpeg two"
    assert turns(second) == [f"<image>\n{syndog_en.READ}", "Second page"]


def test_laion_gpt4v_fetches_images_by_link_and_converts_the_fetched_ones(tmp_path):
    # A parquet shard of https://huggingface.co/datasets/laion/gpt4v-dataset: link and caption per row
    folder = tmp_path / "gpt4v-dataset"
    folder.mkdir()
    names = ("a.jpg", "b.png", "c.jpg", "d.jpg", "dead.jpg")  # 1 of 5 gone: 20%, the most tolerated
    with FileServer({f"/{name}": f"image {name}".encode() for name in names[:-1]}) as server:
        rows = [
            {"link": f"{server.url}/{name}", "caption": f"A detailed caption of {name}."} for name in names
        ]
        pq.write_table(pa.Table.from_pylist(rows), folder / "laion_gpt4v.parquet")
        counter = laion_gpt4v.fetch(folder)
    assert counter.seen == 5 and counter.by_reason == {"not fetched": 1}
    assert (folder / "images" / laion_gpt4v.image_name(rows[1]["link"])).read_bytes() == b"image b.png"
    (entries,) = converted(laion_gpt4v, tmp_path, "gpt4v-dataset").values()
    assert [turns(e)[1] for e in entries] == [f"A detailed caption of {name}." for name in names[:-1]]
    assert entries[1]["image"] == f"gpt4v-dataset/images/{laion_gpt4v.image_name(rows[1]['link'])}"


def test_ocr_vqa_saves_covers_as_jpg_and_counts_dead_links_until_too_many(tmp_path):
    # dataset.json of OCR-VQA (https://ocr-vqa.github.io/): book id -> record with its cover's URL
    folder = tmp_path / "ocr_vqa"
    with FileServer({f"/covers/{n}.png": f"cover {n}".encode() for n in range(19)}) as server:
        books = {f"{n:010d}": {"imageURL": f"{server.url}/covers/{n}.png", "questions": ["Who wrote this book?"], "answers": ["Someone"], "title": "T", "authorName": "A", "genre": 1, "split": 1} for n in range(20)}  # fmt: skip
        write_json(folder / "dataset.json", books)
        counter = ocr_vqa.fetch(folder)  # 1 of 20 covers is gone: 5%, the most tolerated
        assert counter.skipped == 1 and counter.first[0]["id"] == "0000000019.jpg"
        assert (folder / "images/0000000003.jpg").read_bytes() == b"cover 3"
        del server.files["/covers/18.png"]
        (folder / "images/0000000018.jpg").unlink()
        with pytest.raises(TooManySkipped, match="OCR-VQA images: skipped 2 of 20"):
            ocr_vqa.fetch(folder)
    fetched_again = [path for method, path, _ in server.requests if method == "GET"]
    assert len(fetched_again) == 20 + 2  # the second run asked only for the covers not on disk
