"""MM-Vet, under eval/mm-vet/: llava-mm-vet.jsonl, mm-vet/mm-vet.json, mm-vet/images/v1_<i>.png.
Format: yuweihao/MM-Vet release mm-vet.zip; LLaVA scripts/convert_mmvet_for_eval.py; CuMo's
cumo/eval/mmvet.sh.
"""

from pathlib import Path

from cumo.data.synthetic_benchmarks.common import Writer

# A count's answer names the number both ways ("2 <OR> two"), as MM-Vet's answers list alternatives.
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
MMVET_CAPABILITIES = {  # kind -> MM-Vet's capabilities (rec, ocr, know, gen, spat, math)
    "identity": ["rec", "spat"],
    "color": ["rec"],
    "word": ["ocr"],
    "position": ["spat"],
    "count": ["rec", "math"],
    "describe": ["rec", "gen"],
}


def write_mmvet(w: Writer, count: int) -> dict[str, Path]:
    """MM-Vet: open questions graded by a GPT model against answers that may list alternatives with <OR>.

    Layout of CuMo's scripts/cumo/eval/mmvet.sh (mm-vet.zip extracted into eval/mm-vet); LLaVA's mmvet.sh
    expects the images one level up, at eval/mm-vet/images."""
    annotations, rows = {}, []
    kinds = list(MMVET_CAPABILITIES)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        scene, (question,) = w.draw(kind)
        w.image(scene, f"mm-vet/images/v1_{i}.png")
        answer = (
            f"{question.answer} <OR> {NUMBER_WORDS[int(question.answer)]}"
            if kind == "count"
            else question.answer
        )
        annotations[f"v1_{i}"] = {
            "imagename": f"v1_{i}.png",
            "capability": MMVET_CAPABILITIES[kind],
            "question": question.text(),
            "answer": answer,
        }
        rows.append({"question_id": i, "image": f"v1_{i}.png", "text": question.text()})
    return {
        "questions": w.jsonl("llava-mm-vet.jsonl", rows),
        "annotations": w.json("mm-vet/mm-vet.json", annotations),
        "images": w.folder / "mm-vet/images",
    }
