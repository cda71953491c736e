"""`cocoracle ask "347 + 285"`: solve a new problem in latent thoughts and read each thought with an oracle."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from cocoracle.coconut import NO_TOKEN_LIMIT, Codec, generate_with_thoughts, layout_options, thought_steps
from cocoracle.config import InputError
from cocoracle.data import column_additions, cot_steps, question_text
from cocoracle.evaluate import parse_answer
from cocoracle.model import checkpoint_params, load_checkpoint, pick_dtype
from cocoracle.oracle.data import OracleCodec
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.metrics import score, tokens
from cocoracle.oracle.questions import TEMPLATES, prompt, target
from cocoracle.oracle.train import answer_prompts, load_oracle

SUM = re.compile(r"\s*(\d+)\s*\+\s*(\d+)\s*=?\s*")


def parse_problem(problem: str, digits: list[int]) -> tuple[int, int]:
    """(a, b) from 'a + b'; one-line error for anything else, or for operands unlike the training problems
    (both operands of one of the trained digit counts)."""
    match = SUM.fullmatch(problem)
    if not match:
        raise InputError(f"'{problem}': not a sum of two non-negative integers such as '347 + 285'")
    a, b = (int(x) for x in match.groups())
    lengths = {len(str(a)), len(str(b))}
    if len(lengths) > 1 or not lengths <= set(digits):
        trained = " or ".join(map(str, sorted(digits)))
        raise InputError(f"'{problem}': outside what the checkpoint was trained on (two operands of {trained} "
                         "digits each)")
    return a, b


def ask_problem(problem: str, checkpoint: str | Path, oracle_dir: str | Path, task: str, device: torch.device) -> str:
    """The model's answer and, per latent thought, the oracle's reading next to the true value."""
    trained = checkpoint_params(checkpoint)
    a, b = parse_problem(problem, trained["data"]["digits"])
    stage, coconut = trained["stage"], trained["coconut"]
    model, tokenizer = load_checkpoint(checkpoint, device, pick_dtype(trained["model"]["dtype"], device))
    model.eval()
    steps = cot_steps(a, b)
    row = {"id": 0, "a": a, "b": b, "question": question_text(a, b), "steps": steps, "answer": a + b}
    batch = Codec(tokenizer).batch([row], stage, coconut["num_stages"], coconut["thoughts_per_step"],
                                   with_targets=False, **layout_options(coconut)).to(device)
    ids, out = generate_with_thoughts(model, batch, tokenizer.eos_token_id, NO_TOKEN_LIMIT)
    predicted = parse_answer(tokenizer.decode(ids[0]))
    verdict = "correct" if predicted == a + b else f"wrong, true {a + b}"
    lines = [f"{a} + {b}: model answers {predicted} ({verdict}) after {batch.n_thoughts} latent thoughts "
             f"(stage {stage})"]
    oracle, oracle_tokenizer, spec = load_oracle(oracle_dir, device)
    stands_for = thought_steps(stage, coconut["num_stages"], coconut["thoughts_per_step"], len(steps),
                               layout_options(coconut)["order"])
    thoughts = [t for t, step in enumerate(stands_for) if step is not None]
    if not thoughts:
        return "\n".join(lines + ["(no latent thoughts at this stage: nothing to read)"])
    vectors = out.thought_states[spec.source_layer][0, thoughts].float()
    injector = Injector(oracle, spec.inject_layers, spec.alpha)
    question = TEMPLATES[task][0]
    prompts = [prompt(spec.source_layer, question)] * len(thoughts)
    readings = answer_prompts(oracle, injector, OracleCodec(oracle_tokenizer), prompts, vectors, 32, len(thoughts))
    lines += [f"oracle {oracle_dir} (layer {spec.source_layer}) asked: {question}",
              f"{'thought':>7}  {'oracle reads':<34} {'true':<34} match"]
    for t, reading in zip(thoughts, readings, strict=True):
        step = stands_for[t]
        truth = target(task, {"step_text": steps[step], **column_additions(a, b)[step]})
        match = "yes" if score(reading, truth)["exact_match"] else "no"
        shown = [" ".join(tokens(text)) for text in (reading, truth)]  # the same spelling for both
        lines.append(f"{t:>7}  {shown[0]:<34} {shown[1]:<34} {match}")
    return "\n".join(lines)
