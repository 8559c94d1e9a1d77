"""POPE, under eval/pope/: llava_pope_test.jsonl, coco/coco_pope_{adversarial,popular,random}.json,
val2014/*.png. Format: AoiDragon/POPE output/coco; LLaVA llava/eval/eval_pope.py.
"""

import math
from collections import Counter
from pathlib import Path

from cumo.data.synthetic import POSITIONS
from cumo.data.synthetic_benchmarks.common import IDENTITIES, SHORT_ANSWER, Question, Writer, identities

POPE_SETTINGS = ("adversarial", "popular", "random")


def write_pope(w: Writer, count: int) -> dict[str, Path]:
    """POPE on COCO val2014: per image and setting, three objects that are there and three that are not,
    interleaved yes/no as POPE's files are. An "object" is a colour and shape ("red circle"); the absent ones
    are drawn at random (random), the most frequent in the benchmark's images (popular), or those that
    co-occur most with the image's objects (adversarial), as POPE samples them. `count` questions per setting.
    """
    images = []  # (file name, image id, exists question, the three objects present)
    for i in range(math.ceil(count / 6)):
        scene, (question,) = w.draw("exists", max_things=len(POSITIONS), min_objects=3)
        image_id = 100000 + i
        name = f"COCO_val2014_{image_id:012d}.png"
        w.image(scene, f"val2014/{name}")
        images.append((name, image_id, question, w.rng.sample(sorted(identities(scene)), 3)))
    frequency = Counter(name for _, _, question, _ in images for name in identities(question.scene))
    co_occurrence = Counter(
        (a, b)
        for _, _, question, _ in images
        for a in identities(question.scene)
        for b in identities(question.scene)
        if a != b
    )

    def absent(question: Question, setting: str) -> list[str]:
        present = identities(question.scene)
        candidates = [name for name in IDENTITIES if name not in present]
        if setting == "random":
            return w.rng.sample(candidates, 3)
        if setting == "popular":
            return sorted(candidates, key=lambda name: (-frequency[name], name))[:3]
        return sorted(candidates, key=lambda name: (-sum(co_occurrence[p, name] for p in present), name))[:3]

    paths, rows = {}, []
    for setting in POPE_SETTINGS:
        labels = []
        for name, image_id, question, positives in images:
            for positive, negative in zip(positives, absent(question, setting), strict=True):
                for value in (positive, negative):
                    check = question.check(value)
                    labels.append(
                        {
                            "question_id": len(labels),
                            "image": name,
                            "image_id": image_id,
                            "text": check.text,
                            "label": check.label,
                        }
                    )
                    rows.append(
                        {
                            "question_id": len(rows),
                            "image": name,
                            "text": f"{check.text}\n{SHORT_ANSWER}",
                            "category": setting,
                        }
                    )
        paths[setting] = w.jsonl(f"coco/coco_pope_{setting}.json", labels)  # JSON lines despite the name
    return {"questions": w.jsonl("llava_pope_test.jsonl", rows), **paths, "images": w.folder / "val2014"}
