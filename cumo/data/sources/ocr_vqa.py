"""OCR-VQA images (https://ocr-vqa.github.io/) for LLaVA-665K, fetched from the cover URLs in the dataset's
dataset.json as its own loadDataset.py does, {"<book id>": {"imageURL", "questions", "answers", ...}}.

Saved as images/<book id>.jpg whatever the URL's extension: "we save all files as .jpg"
(https://github.com/haotian-liu/LLaVA#visual-instruction-tuning), the paths llava_v1_5_mix665k.json uses.
"""

from pathlib import Path

from cumo.data.download import fetch_all
from cumo.data.skips import SkipCounter
from cumo.data.sources import read_json

# Covers that can no longer be fetched. LLaVA-665K itself misses 355 of its ~80K OCR-VQA images; this
# bound is a guess to revise with the count the first full run records in the marker.
MAX_MISSING = 0.05


def fetch(folder: Path) -> SkipCounter:
    books = read_json(folder / "dataset.json")
    if not isinstance(books, dict):
        raise ValueError(
            f"{folder / 'dataset.json'}: expected an object from book id to record; is it OCR-VQA's?"
        )
    pairs = ((book["imageURL"], folder / "images" / f"{book_id}.jpg") for book_id, book in books.items())
    return fetch_all(pairs, SkipCounter("OCR-VQA images", max_share=MAX_MISSING))
