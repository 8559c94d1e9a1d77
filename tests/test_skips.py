"""SkipCounter: counts by reason, keeps the first offenders, fails past its share."""

import pytest

from cumo.data.skips import SkipCounter, TooManySkipped


def test_counts_by_reason_and_passes_under_the_threshold():
    counter = SkipCounter("mixture m.json", max_share=0.01)
    counter.see(1000)
    for i in range(10):
        counter.skip("missing image", f"id{i}", f"ocr_vqa/images/{i}.jpg")
    counter.check()  # 1.0% is not above 1%
    assert counter.to_dict()["by_reason"] == {"missing image": 10}
    assert counter.first[0] == {"id": "id0", "reason": "missing image", "detail": "ocr_vqa/images/0.jpg"}
    assert counter.summary() == "mixture m.json: skipped 10 of 1000 (missing image: 10)"


def test_fails_past_the_threshold_naming_reasons_and_offenders():
    counter = SkipCounter("tokenisation", max_share=0.01, keep=2)
    counter.see(100)
    counter.skip("labels misaligned", 7)
    counter.skip("truncated", 8, "4100 > 4096 tokens")
    with pytest.raises(
        TooManySkipped, match=r"skipped 2 of 100 \(labels misaligned: 1, truncated: 1\)"
    ) as error:
        counter.check()
    assert "8: truncated 4100 > 4096 tokens" in str(error.value)


def test_merge_adds_counts_and_keeps_the_offender_limit():
    total, part = SkipCounter("m", keep=3), SkipCounter("m")
    total.see(5)
    total.skip("a", 1)
    part.see(7)
    for i in range(4):
        part.skip("b", i)
    total.merge(part)
    assert (total.seen, total.skipped, len(total.first)) == (12, 5, 3)
