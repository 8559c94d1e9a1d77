"""Prediction records as cumo.eval.generate writes them (LLaVA's answer-file schema), for scorer tests."""

from cumo.eval.benchmark import Question


def answered(questions: list[Question], texts: list[str]) -> list[dict]:
    return [
        {
            "question_id": question.question_id,
            "prompt": question.text,
            "text": text,
            "answer_id": f"answer-{i}",
            "model_id": "oracle",
            "metadata": question.metadata,
        }
        for i, (question, text) in enumerate(zip(questions, texts, strict=True))
    ]
