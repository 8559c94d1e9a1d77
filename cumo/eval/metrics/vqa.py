"""VQA-style answer normalisation and accuracy: TextVQA (m4c / EvalAI) and VQAv2 (the official evaluator).

Three public pieces of code are reproduced, quirks included, because the published numbers come from them:

- `normalize_answer` is EvalAI's answer processor as LLaVA copies it from mmf (llava/eval/m4c_evaluator.py,
  `EvalAIAnswerProcessor`): lower case, commas, question marks dropped, "'s" split off, punctuation removed or
  turned into spaces, periods not inside a number dropped, number words to digits, articles dropped,
  contractions restored. LLaVA's scripts/convert_vqav2_for_submission.py applies it to every VQAv2 answer.
- `textvqa_accuracy` is m4c's `TextVQAAccuracyEvaluator` (LLaVA llava/eval/eval_textvqa.py): prediction and
  the ten human answers normalised alike; the score is min(1, matches / 3) averaged over the ten subsets of
  nine answers that leave one annotator out.
- `vqa_accuracy` is the official VQA evaluator as it stands now (GT-Vision-Lab/VQA
  PythonEvaluationTools/vqaEvaluation/vqaEval.py at a013f00, 2021, "Fixed processing answers bug"): prediction
  and human answers on one line and stripped; when the humans disagree, all of them and the prediction get
  punctuation and digit/article processing; when they agree, none does; then the same leave-one-out formula.
  The 2016 version (458a8b2) processed the prediction always and the humans with punctuation only, when they
  disagreed: "dark-red" against ten "dark-red" scored 0 there, and "dog" against "the dog"/"a dog" 0; both
  score 1 now. It is not kept: no number this project reports comes from it.
"""

import re

# EvalAI's tables (m4c_evaluator.py, identical to vqaEval.py's); "somebody'd" -> "somebodyd" is theirs.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# Upstream writes "(?!<=\d)": a look-ahead for the text "<=", where a look-behind for a digit was meant; it
# never fires, so a period goes unless a digit follows ("3.5" stays, "e.g." -> "eg", "5." -> "5").
PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# Upstream passes re.UNICODE (32) where `sub` takes its count: at most 32 periods are removed.
PERIOD_LIMIT = re.UNICODE


def process_punctuation(text: str) -> str:
    """vqaEval.processPunctuation: a mark next to a space (or any mark, in a text with a comma inside a
    number) is removed, otherwise it becomes a space; then the periods."""
    out = text
    drop_all = COMMA_IN_NUMBER.search(text) is not None
    for mark in PUNCTUATION:
        # The test reads the text as it came in, not as the loop has changed it (upstream's inText).
        if drop_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD.sub("", out, count=PERIOD_LIMIT)


def process_digit_article(text: str) -> str:
    """vqaEval.processDigitArticle: lower case, number words to digits, no articles, contractions restored."""
    words = [NUMBERS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def one_line(text: str) -> str:
    """Newlines and tabs as spaces, stripped: what both EvalAI and vqaEval.py do first."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer: str) -> str:
    """EvalAI's answer processor (m4c_evaluator.EvalAIAnswerProcessor.__call__)."""
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return process_digit_article(process_punctuation(one_line(answer)))


def leave_one_out(prediction: str, answers: list[str]) -> float:
    """min(1, (humans other than i who said `prediction`) / 3), averaged over the annotators i."""
    scores = [
        min(1.0, sum(answer == prediction for j, answer in enumerate(answers) if j != i) / 3)
        for i in range(len(answers))
    ]
    return sum(scores) / len(scores)


def textvqa_accuracy(prediction: str, answers: list[str]) -> float:
    """One TextVQA question's soft accuracy in [0, 1] (m4c's evaluator asserts ten human answers)."""
    if len(answers) != 10:
        raise ValueError(f"TextVQA has ten human answers per question, got {len(answers)}: {answers}")
    return leave_one_out(normalize_answer(prediction), [normalize_answer(answer) for answer in answers])


# Which vqaEval.py `vqa_accuracy` reproduces; written into the metrics it computes.
VQA_EVALUATOR = "GT-Vision-Lab/VQA vqaEval.py a013f0043c1e2cdc995922dfe257f7149aa9af06 (2021)"


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """One VQAv2 question's accuracy in [0, 1], as the official evaluator (VQA_EVALUATOR) computes it."""
    prediction, answers = one_line(prediction), [one_line(answer) for answer in answers]
    if len(set(answers)) > 1:  # asked after the strip, as upstream asks it
        prediction = process_digit_article(process_punctuation(prediction))
        answers = [process_digit_article(process_punctuation(answer)) for answer in answers]
    return leave_one_out(prediction, answers)
