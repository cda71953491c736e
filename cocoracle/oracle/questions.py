"""The activation oracles' language: the placeholder token, the prompt, and one template family per task.

Tasks about one thought (the column step it stands for): step, digit, carry, a_digit and b_digit (each
operand's digit in that column) and operands (both, 'a + b'); about the whole sum: answer and problem.

Training and evaluation draw questions from the same templates. The tiny tokenizer is built over these
texts too, so every word of a question is a token of its own.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ACT = "<act>"  # placeholder whose residual stream receives the injected activation
TEMPLATES: dict[str, tuple[str, ...]] = {
    "step": ("What step was computed here ?", "Which reasoning step does this thought replace ?",
             "Write out the step of the sum this thought stands for ."),
    "digit": ("Which digit is written at this step ?", "What digit does this step write ?"),
    "carry": ("What is the carry out of this step ?", "Which carry does this step pass on ?"),
    "a_digit": ("Which digit of the first number is added here ?",
                "What digit does the first number give this step ?"),
    "b_digit": ("Which digit of the second number is added here ?",
                "What digit does the second number give this step ?"),
    "operands": ("Which two digits are added here ?", "What digits does this step add ?"),
    "answer": ("What is the final answer ?", "What will the sum be ?"),
    "problem": ("What problem is being solved ?", "Which two numbers are being added ?"),
}


def prompt(layer: int, question: str) -> str:
    """`Layer {L}: <act> {question}`: the oracle is told which layer the activation was read from."""
    return f"Layer {layer} : {ACT} {question}"


def target(task: str, item: dict[str, Any]) -> str:
    """The answer to `task` for an activation-cache index row (without the end token)."""
    if task == "step":
        return str(item["step_text"])
    if task == "digit":
        return str(int(item["digit_written"]))  # index columns may be floats (a thought without a step is NaN)
    if task == "carry":
        return str(int(item["carry_out"]))
    if task in ("a_digit", "b_digit"):
        return str(int(item[task]))
    if task == "operands":
        return f"{int(item['a_digit'])} + {int(item['b_digit'])}"
    if task == "answer":
        return str(int(item["answer"]))
    if task == "problem":
        return str(item["question"]).removesuffix(" =")
    raise ValueError(f"unknown oracle task '{task}'")


def vocabulary_texts() -> Iterator[str]:
    """Every word a prompt can contain, for building a tokenizer."""
    yield prompt(0, "")
    for templates in TEMPLATES.values():
        yield from templates
