"""`cocoracle ask "347 + 285"`: solve a new problem in latent thoughts and read each thought with an oracle."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import torch

from cocoracle.coconut import ANSWER_MARK, NO_TOKEN_LIMIT, Codec, generate_with_thoughts, layout_options, thought_steps
from cocoracle.config import InputError, load_params, read_yaml
from cocoracle.data import column_additions, cot_steps, question_text
from cocoracle.evaluate import parse_answer
from cocoracle.model import checkpoint_params, load_checkpoint, pick_dtype
from cocoracle.oracle.data import OracleCodec
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.metrics import score, tokens
from cocoracle.oracle.questions import TEMPLATES, prompt, target
from cocoracle.oracle.train import answer_prompts, load_oracle
from cocoracle.steps import STEPS, Layout

SUM = re.compile(r"\s*(\d+)\s*\+\s*(\d+)\s*=?\s*")


def parse_problem(problem: str, digits: list[int]) -> tuple[int, int]:
    """(a, b) from 'a + b'; one-line error for anything else, or for operands unlike the training problems
    (both operands of one of the trained digit counts). Their lengths are checked on the text, before any
    conversion to integers (which would refuse, or take long over, thousands of digits); any Unicode decimal
    digits (Arabic-Indic, full-width, ...) are read as the ASCII digits they stand for (normalised_digits)."""
    match = SUM.fullmatch(problem)
    shown = problem if len(problem) <= 40 else problem[:37] + "..."
    if not match:
        raise InputError(f"'{shown}': not a sum of two non-negative integers such as '347 + 285'")
    operands = [ascii_digits(x).lstrip("0") or "0" for x in match.groups()]
    lengths = [len(x) for x in operands]
    if lengths[0] != lengths[1] or lengths[0] not in digits:
        trained = " or ".join(map(str, sorted(digits)))
        raise InputError(f"'{shown}': outside what the checkpoint was trained on (two operands of {trained} "
                         f"digits each); got {lengths[0]} and {lengths[1]} digits")
    return int(operands[0]), int(operands[1])


def ascii_digits(text: str) -> str:
    """A run of Unicode decimal digits (what the regular expression's \\d matches) in ASCII digits."""
    return "".join(str(unicodedata.decimal(ch)) for ch in text)


def normalised_digits(problem: str) -> bool:
    """Whether the problem writes a digit other than in ASCII (then read as the ASCII digit it stands for)."""
    return any(ch.isdecimal() and not ch.isascii() for ch in problem)


def default_paths(config_file: str | Path, params_file: str | Path | None = None, stage: int | None = None,
                  kind: str = "self", seed: int | None = None) -> tuple[str, str]:
    """The pipeline's checkpoint and oracle (of `kind`) of one stage and training seed (default: the first of
    run.seeds), where the pipeline writes them.

    The paths are the step table's outputs (cocoracle/steps.py) filled with config.yaml's directories; the
    params file is config.yaml's params_file unless given. The stage defaults to the last one with oracles
    (the last of oracle.stages: coconut.num_stages, unless oracle.stages leaves it out), so that the oracle
    reads the checkpoint it was trained on.
    """
    config = read_yaml(config_file)
    if params_file is None:
        if not isinstance(config, dict) or not isinstance(config.get("params_file"), str):
            raise InputError(f"{config_file}: params_file: missing (or pass --params)")
        params_file = config["params_file"]
    layout = Layout.from_config(config, load_params(params_file), Path.cwd())
    with_oracles = layout.oracle_stages
    if stage is None:
        if not with_oracles:
            raise InputError(f"{params_file}: coconut.num_stages is 0: no latent stage, no oracle to ask")
        stage = with_oracles[-1]
    elif stage not in layout.stages:
        raise InputError(f"--stage {stage}: {params_file} trains stages {layout.stages[0]}..{layout.stages[-1]}")
    elif stage not in with_oracles:
        raise InputError(f"--stage {stage}: no oracle at this stage ({params_file} oracle.stages: "
                         f"{', '.join(map(str, with_oracles)) or 'none'}); pass --oracle")
    seed = layout.seeds[0] if seed is None else seed
    checkpoint = STEPS["train_stage"].output_paths(layout, {"seed": seed, "stage": stage})["checkpoint"]
    oracle = STEPS["train_oracle"].output_paths(layout, {"seed": seed, "kind": kind, "stage": stage})["oracle"]
    return checkpoint, oracle


def ask_paths(checkpoint: str | None, oracle: str | None, config_file: str | Path, params_file: str | None,
              stage: int | None, kind: str, seed: int | None = None) -> tuple[str, str]:
    """The checkpoint and oracle given, the pipeline's (default_paths) for those not given; a one-line error
    when a default one has not been made yet."""
    given = {"--checkpoint": checkpoint, "--oracle": oracle}
    if None not in given.values():
        return checkpoint, oracle
    paths = []
    for (flag, path), default in zip(given.items(), default_paths(config_file, params_file, stage, kind, seed),
                                 strict=True):
        if path is None and not Path(default).is_dir():
            raise InputError(f"{default}: not made yet (run the pipeline: snakemake --cores all), or pass {flag}")
        paths.append(default if path is None else path)
    return paths[0], paths[1]


def answer_line(a: int, b: int, text: str, predicted: int | None) -> str:
    """What the model answered, or a sentence saying it wrote no answer (and what it wrote instead)."""
    if predicted is None:
        wrote = " ".join(text.split())
        wrote = wrote if len(wrote) <= 60 else wrote[:57] + "..."
        return (f"{a} + {b}: the model wrote no answer ({wrote!r}, where an answer is '{ANSWER_MARK.strip()}' then "
                f"a number of at most 18 digits; true {a + b})")
    verdict = "correct" if predicted == a + b else f"wrong, true {a + b}"
    return f"{a} + {b}: model answers {predicted} ({verdict})"


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
    text = tokenizer.decode(ids[0])
    plural = "" if batch.n_thoughts == 1 else "s"
    note = f"read {problem.strip()!r} as {a} + {b} (its digits written in ASCII)"
    lines = [note] if normalised_digits(problem) else []
    lines += [f"{answer_line(a, b, text, parse_answer(text))} after {batch.n_thoughts} latent thought{plural} "
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
