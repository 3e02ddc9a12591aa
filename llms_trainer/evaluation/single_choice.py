"""Single-choice accuracy (eval_data/knowledge/*.jsonl).

Record: {"question": stem + option lines "A. ...", "B. ...", "answer": "B", "source": "..."}; option lines
are separated by real newlines or by the literal two characters backslash-n. The offered letters are those
that start an option line ("A." "A．" "A、" "A:" "A)"), so a two-option question offers only A and B.

Scoring: prompt = PROMPT_TEMPLATE.format(few_shot_prefix=..., question=...) with BOS in front, one forward
pass per question, and the prediction is the offered letter the model finds most likely next — letters not
offered are never predicted. A letter is scored as the model would write it after "Answer:", i.e. with a
leading space (ANSWER_LETTER_TEMPLATE), tokenized in that context: the pieces of "Answer: B" after those of
"Answer:". When " B" is one piece ("▁B", the usual Llama case) this compares that piece's next-token logit
across the offered letters. When some letters take two pieces ("▁" + "B") while others take one ("▁A"),
the forward pass also feeds the shared first piece and a letter's score is the summed log-probability of
its pieces, so both kinds are compared fairly in the same single pass.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llms_trainer.evaluation import (
    EvalDataError,
    batches,
    encode_with_bos,
    eval_mode,
    gather_results,
    left_padded,
    merge_results,
    pad_id,
    rank_share,
    read_jsonl,
)

PROMPT_TEMPLATE = "{few_shot_prefix}{question}\nAnswer:"
ANSWER_LETTER_TEMPLATE = " {letter}"
_OPTION_LINE = re.compile(r"^\s*([A-Z])\s*[.．、:：)）]")


@dataclass(frozen=True)
class Question:
    question: str              # stem and option lines, real newlines
    answer: str                # one of letters
    letters: tuple[str, ...]   # offered letters, in order of appearance
    source: str
    where: str                 # "file:line", for messages


def offered_letters(question: str) -> tuple[str, ...]:
    """Letters that start an option line, in order, without repeats."""
    letters: list[str] = []
    for line in question.split("\n"):
        match = _OPTION_LINE.match(line)
        if match and match.group(1) not in letters:
            letters.append(match.group(1))
    return tuple(letters)


def parse_question(record: dict, where: str, default_source: str) -> Question:
    """One record → Question; EvalDataError naming `where` when it cannot be scored."""
    text = record.get("question")
    if not isinstance(text, str) or not text.strip():
        raise EvalDataError(f"{where}: 'question' must be a non-empty string")
    text = text.replace("\\n", "\n")
    letters = offered_letters(text)
    if len(letters) < 2:
        raise EvalDataError(f"{where}: found {len(letters)} option line(s) in 'question'; write at least two "
                            "options as lines 'A. ...', 'B. ...'")
    answer = record.get("answer")
    answer = answer.strip().upper() if isinstance(answer, str) else answer
    if answer not in letters:
        raise EvalDataError(f"{where}: 'answer' is {record.get('answer')!r} but the question offers "
                            f"{'/'.join(letters)}; set it to one of those letters")
    source = record.get("source", default_source)
    if not isinstance(source, str) or not source.strip():
        raise EvalDataError(f"{where}: 'source' must be a non-empty string when given")
    return Question(question=text, answer=answer, letters=letters, source=source.strip(), where=where)


def load_single_choice(path: str | Path) -> list[Question]:
    """Questions of a JSONL file; a missing 'source' defaults to the file name without extension."""
    return [parse_question(record, where, Path(path).stem) for where, record in read_jsonl(path)]


def letter_pieces(tokenizer: Any, letters: tuple[str, ...]) -> tuple[list[int], dict[str, list[int]]]:
    """(pieces to feed after the prompt, {letter: its pieces after "Answer:"}) for one forward pass.

    The fed pieces are the longest letter's pieces minus its last; every other letter's pieces minus
    its last must be a prefix of them (true for one-piece and "▁" + letter tokenizations)."""
    cue = PROMPT_TEMPLATE.format(few_shot_prefix="", question="")
    base = tokenizer.encode(cue, add_special_tokens=False)
    pieces: dict[str, list[int]] = {}
    for letter in letters:
        full = tokenizer.encode(cue + ANSWER_LETTER_TEMPLATE.format(letter=letter), add_special_tokens=False)
        if full[:len(base)] != base or len(full) == len(base):
            raise EvalDataError(f"tokenizer merges the answer letter {letter!r} into 'Answer:'; single-choice "
                                "scoring needs the letter to start a new piece")
        pieces[letter] = full[len(base):]
    feed = max((p[:-1] for p in pieces.values()), key=len)
    distinct = len({tuple(p) for p in pieces.values()}) == len(letters)
    on_feed_path = all(feed[:len(p) - 1] == p[:-1] for p in pieces.values())
    if not (distinct and on_feed_path):
        raise EvalDataError(f"tokenizer encodes the answer letters {'/'.join(letters)} as {pieces}, which "
                            "cannot be scored in one pass; use a tokenizer that encodes each letter distinctly")
    return feed, pieces


def letter_scores(logits: torch.Tensor, feed_len: int, pieces: dict[str, list[int]]) -> dict[str, float]:
    """Summed log-probability of each letter's pieces; logits are the row's last feed_len + 1 positions."""
    logprobs = torch.log_softmax(logits[-(feed_len + 1):].float(), dim=-1)
    return {letter: sum(logprobs[j, token].item() for j, token in enumerate(ids))
            for letter, ids in pieces.items()}


def predict_letters(model: Any, tokenizer: Any, questions: list[Question], device: Any,
                    few_shot_prefix: str = "", batch_size: int = 8) -> list[str]:
    """The predicted letter of each question (argmax over its offered letters only)."""
    predictions: list[str] = []
    cache: dict[tuple[str, ...], tuple[list[int], dict[str, list[int]]]] = {}
    for batch in batches(questions, batch_size):
        for question in batch:
            if question.letters not in cache:
                cache[question.letters] = letter_pieces(tokenizer, question.letters)
        plans = [cache[q.letters] for q in batch]
        rows = [encode_with_bos(tokenizer, PROMPT_TEMPLATE.format(few_shot_prefix=few_shot_prefix,
                                                                  question=q.question)) + feed
                for q, (feed, _) in zip(batch, plans, strict=True)]
        logits = model(**left_padded(rows, pad_id(tokenizer), device)).logits
        for row_logits, (feed, pieces) in zip(logits, plans, strict=True):
            scores = letter_scores(row_logits, len(feed), pieces)
            predictions.append(max(scores, key=scores.__getitem__))
    return predictions


def accuracy_metrics(questions: list[Question], predictions: list[str]) -> dict[str, float]:
    """{"eval/single_choice/acc", "eval/single_choice/<source>/acc"} as fractions in [0, 1]."""
    by_source: dict[str, list[bool]] = defaultdict(list)
    for question, predicted in zip(questions, predictions, strict=True):
        by_source[question.source].append(predicted == question.answer)
    hits = [hit for source_hits in by_source.values() for hit in source_hits]
    metrics = {"eval/single_choice/acc": sum(hits) / len(hits)}
    for source in sorted(by_source):
        metrics[f"eval/single_choice/{source}/acc"] = sum(by_source[source]) / len(by_source[source])
    return metrics


def evaluate_single_choice(model: Any, tokenizer: Any, questions: list[Question], accelerator: Any,
                           few_shot_prefix: str = "", batch_size: int = 8) -> dict[str, float]:
    """Accuracy overall and per source; call on all ranks, each scores its share of the questions."""
    share = rank_share(questions, accelerator.process_index, accelerator.num_processes)
    with eval_mode(model):
        predicted = predict_letters(model, tokenizer, [q for _, q in share], accelerator.device,
                                    few_shot_prefix, batch_size)
    gathered = gather_results(accelerator, [(index, p) for (index, _), p in zip(share, predicted, strict=True)])
    return accuracy_metrics(questions, merge_results(gathered))
