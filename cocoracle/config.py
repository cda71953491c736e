"""Load and validate params.yaml: one place for every setting that changes results."""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# the problem splits: dev is the held-out split to look at, test the fresh one scored once for a study's final
# figures (run.held_out), ood has longer operands
SPLITS = ("train", "val", "dev", "test", "ood")
ORACLE_KINDS = ("separate", "self")  # params sections oracle.separate and oracle.self
# the tasks about one latent thought (the column step it stands for); answer and problem are about the whole sum
THOUGHT_TASKS = ("step", "digit", "carry", "a_digit", "b_digit", "operands")
ORACLE_TASKS = (*THOUGHT_TASKS, "answer", "problem")  # what an oracle is asked (params oracle.tasks)
# operand digits at most: the sum of two then has at most 18 digits, the longest answer an int64 column and
# cocoracle.evaluate.parse_answer hold
MAX_DIGITS = 17
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class InputError(ValueError):
    """Bad input (a parameter, a config value, a missing or corrupt file); one line naming the key or file."""


def _schema() -> dict[str, Any]:
    text = resources.files("cocoracle").joinpath("schemas/params.schema.yaml").read_text()
    return yaml.safe_load(text)


def _is_strict_integer(checker, instance) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


# JSON Schema counts 100.0 as an integer; sizes and counts must be written as integers.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer))


def _key_of(error: jsonschema.ValidationError) -> str:
    path = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        path.append(str(error.message).split("'")[1])
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)'", error.message)
        path.append(extra[0] if extra else "?")
    return ".".join(path) or "<root>"


def _schema_message(error: jsonschema.ValidationError) -> str:
    """The error in one line, saying what is allowed where jsonschema does not (alternatives, keys, the root)."""
    if not error.absolute_path and error.validator == "type":
        got = "an empty file" if error.instance is None else f"a {type(error.instance).__name__}"
        return f"must be a mapping with the sections {', '.join(error.schema['required'])}, got {got}"
    if error.validator == "oneOf" and "description" in error.schema:
        return f"{error.instance!r} is not allowed: {error.schema['description']}"
    if error.validator == "pattern" and error.parent is not None and "description" in error.parent.schema:
        return f"{error.instance!r} is not allowed: {error.parent.schema['description']}"  # a oneOf's string form
    if error.validator == "additionalProperties":
        return f"unknown key (allowed: {', '.join(error.schema['properties'])})"
    bounds = error.schema.get("minimum"), error.schema.get("maximum")
    if error.validator in ("minimum", "maximum") and None not in bounds:
        why = f"; {error.schema['description']}" if "description" in error.schema else ""
        return f"{error.message.splitlines()[0]} (allowed: {bounds[0]}..{bounds[1]}{why})"
    return error.message.splitlines()[0]


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, with a one-line error naming it when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def validate_params(params: Any, source: str = "params") -> dict[str, Any]:
    """Check params against the schema and the rules a schema cannot express."""
    validator = _Validator(_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise InputError(f"{source}: {_key_of(error)}: {_schema_message(error)}")
    for key, message in _semantic_errors(params):
        raise InputError(f"{source}: {key}: {message}")
    return params


def load_params(path: str | Path, seed: int | None = None) -> dict[str, Any]:
    """Read and validate a params file, for the run of training seed `seed` when given (run_seed); raises
    InputError with a one-line message."""
    params = validate_params(read_yaml(path), source=str(path))
    if seed is not None:
        params["run"]["seed"] = seed
    return params


def run_seed(params: dict[str, Any]) -> int:
    """The training seed of the run a step belongs to (model init, training and the oracles read it): the one
    load_params was given (a step's --seed), else the first of run.seeds."""
    return params["run"].get("seed", params["run"]["seeds"][0])


def _semantic_errors(p: dict[str, Any]):
    data, model, coconut, train = p["data"], p["model"], p["coconut"], p["train"]
    if len(data["digit_probs"]) != len(data["digits"]):
        yield "data.digit_probs", (f"needs one entry per data.digits ({len(data['digits'])}), "
                                   f"got {len(data['digit_probs'])}")
    elif not math.isclose(sum(data["digit_probs"]), 1.0, abs_tol=1e-6):
        yield "data.digit_probs", f"must sum to 1, got {sum(data['digit_probs']):g}"
    longest = max(data["digits"])
    if data["n_ood"] > 0 and data["ood_digits"] in data["digits"]:
        yield "data.ood_digits", (f"{data['ood_digits']} is also in data.digits, so the OOD split would not be out "
                                  "of distribution")
    elif data["n_ood"] > 0 and data["ood_digits"] < longest:
        allowed = f"{longest + 1}..{MAX_DIGITS}" if longest < MAX_DIGITS else "none: set data.n_ood to 0"
        yield "data.ood_digits", (f"{data['ood_digits']} is shorter than data.digits' longest operands ({longest}): "
                                  f"the OOD split has longer operands (allowed: {allowed})")
    drawn = zip(data["digits"], split_counts(data), split_counts(data, data["n_test"]), strict=False)
    for d, pool, test in drawn:  # unequal lengths are reported above
        if pool + test > unique_problems(d):
            yield "data.digit_probs", (
                f"asks for {pool + test} distinct {d}-digit problems but only {unique_problems(d)} exist; "
                "lower data.n_train/n_val/n_dev/n_test or that digit count's probability")
    if data["n_ood"] > unique_problems(data["ood_digits"]):
        yield "data.n_ood", (f"only {unique_problems(data['ood_digits'])} distinct {data['ood_digits']}-digit "
                             "problems exist")
    name = model["name"]
    if name == "tiny":
        tiny = model.get("tiny")
        if tiny is None:
            yield "model.tiny", "required when model.name is 'tiny'"
        elif tiny["n_embd"] % tiny["n_head"]:
            yield "model.tiny.n_head", f"must divide model.tiny.n_embd ({tiny['n_embd']})"
        else:
            yield from _depth_errors(p, tiny["n_layer"])
        if tiny is not None:
            yield from _position_errors(p, tiny["n_positions"])
    elif not _is_model_ref(name):
        yield "model.name", f"'{name}' is not 'tiny', an existing local directory, or a Hugging Face model id"
    yield from _revision_errors(name, model.get("revision"), "model.name", "model.revision", "tiny")
    separate = p["oracle"]["separate"]
    base = separate["base"]
    if base != "stage-0" and not _is_model_ref(base):
        yield "oracle.separate.base", (f"'{base}' is not 'stage-0', an existing local directory, "
                                       "or a Hugging Face model id")
    yield from _revision_errors(base, separate.get("revision"), "oracle.separate.base", "oracle.separate.revision",
                                "stage-0")
    stages = p["oracle"]["stages"]
    if stages != "all" and max(stages) > coconut["num_stages"]:
        yield "oracle.stages", f"latent stages are 1..coconut.num_stages ({coconut['num_stages']}), got {max(stages)}"
    if not coconut["steps_see_question"] and coconut["answer_sees_question"]:
        yield "coconut.steps_see_question", ("false needs coconut.answer_sees_question false (the text steps "
                                             "cannot be hidden from the question while the answer sees it)")
    if "test" in p["evaluate"]["splits"] and p["run"]["held_out"] != "test":
        yield "evaluate.splits", ("test is scored only for a study's final figures: set run.held_out: test for "
                                  "that run, and score dev until then")
    held_out = p["run"]["held_out"]
    if held_out not in p["evaluate"]["splits"]:
        yield "evaluate.splits", f"must include run.held_out ({held_out}), the split the other figures are scored on"
    steps = max_steps(longest)
    if coconut["num_stages"] > steps:
        yield "coconut.num_stages", (f"{coconut['num_stages']} is more stages than reasoning steps: a problem of "
                                     f"data.digits has at most {steps} ({longest} columns and a final carry), and "
                                     f"stage k replaces k of them (allowed: 0..{steps})")
    epochs = train["epochs"]
    if isinstance(epochs, list) and len(epochs) != coconut["num_stages"] + 1:
        yield "train.epochs", (f"needs one entry per stage (coconut.num_stages + 1 = {coconut['num_stages'] + 1}), "
                               f"got {len(epochs)}")
        return
    if train["val_examples"] > data["n_val"]:
        yield "train.val_examples", (f"{train['val_examples']} is more than the val split holds (data.n_val: "
                                     f"{data['n_val']}; allowed: 0..{data['n_val']})")
    per_stage = [stage_optimizer_steps(train, stage, data["n_train"]) for stage in range(coconut["num_stages"] + 1)]
    fewest = min(per_stage)
    if train["warmup_steps"] > fewest:
        stage = per_stage.index(fewest)
        how = "train.max_steps" if train.get("max_steps") else "train.epochs over data.n_train problems"
        yield "train.warmup_steps", (f"{train['warmup_steps']} is more than stage {stage}'s {fewest} optimizer steps "
                                     f"({how}), so its learning rate would never reach train.lr "
                                     f"(allowed: 0..{fewest})")
    for kind in ORACLE_KINDS:
        hp = p["oracle"][kind]["train"]
        if hp["max_steps"] is not None and hp["warmup_steps"] > hp["max_steps"]:
            yield f"oracle.{kind}.train.warmup_steps", (
                f"{hp['warmup_steps']} is more than oracle.{kind}.train.max_steps ({hp['max_steps']}), so the "
                f"learning rate would never reach oracle.{kind}.train.lr (allowed: 0..{hp['max_steps']})")


def max_steps(digits: int) -> int:
    """Reasoning steps of the longest problem with `digits`-digit operands: one per column and a final carry."""
    return digits + 1


def longest_sequence(digits: int, coconut: dict[str, Any]) -> int:
    """Positions the tiny model needs for `digits`-digit operands, as training checks them (cocoracle.train.
    _check_fits): the question, <bot>, every thought of the last stage, <eot>, every step as text with its `|`,
    `###`, the answer and <eos>. The tiny tokenizer gives each digit, sign and word its own token; the longest
    problem has every column carrying (99 + 99: '9+9=18 write 8 carry 1 |', '9+9+1=19 write 9 carry 1 |',
    'carry 1 write 1 |'), so that every problem of these digits fits."""
    question = 2 * digits + 2  # a + b =
    steps = (10 + 1) + (12 + 1) * (digits - 1) + (4 + 1)
    thoughts = coconut["num_stages"] * coconut["thoughts_per_step"]
    return question + 1 + thoughts + 1 + steps + 1 + (digits + 1) + 1


def _position_errors(p: dict[str, Any], n_positions: int) -> Iterator[tuple[str, str]]:
    """The tiny model's position table must hold the longest sequence of every split (the OOD one included)."""
    data = p["data"]
    digits = max(data["digits"] + ([data["ood_digits"]] if data["n_ood"] > 0 else []))
    needed = longest_sequence(digits, p["coconut"])
    if n_positions < needed:
        yield "model.tiny.n_positions", (
            f"{n_positions} is too few: the longest sequence, {digits}-digit operands with every column carrying "
            f"({max_steps(digits)} text steps, {p['coconut']['num_stages'] * p['coconut']['thoughts_per_step']} "
            f"thoughts, markers and the answer), needs {needed} positions (allowed: {needed} or more)")


def stage_optimizer_steps(train: dict[str, Any], stage: int, n_rows: int) -> int:
    """train.max_steps, else enough steps for the stage's epochs over n_rows problems."""
    if train.get("max_steps"):
        return int(train["max_steps"])
    per_epoch = math.ceil(n_rows / (train["batch_size"] * train["grad_accum"]))
    return max(1, math.ceil(stage_epochs(train, stage) * per_epoch))


def _is_model_ref(name: str) -> bool:
    """An existing local directory, or something shaped like a Hugging Face model id."""
    return Path(name).is_dir() or is_hub_id(name)


def is_hub_id(name: str) -> bool:
    """A Hugging Face model id (to fetch at a pinned revision), not an existing local directory nor a path."""
    return not Path(name).is_dir() and not name.startswith((".", "/", "~")) and bool(HUB_ID.match(name))


def _revision_errors(name: str, revision: str | None, name_key: str, key: str, own: str) -> Iterator[tuple[str, str]]:
    """A hub id needs its commit pinned (the schema checks the sha's form); anything else takes no revision."""
    if is_hub_id(name) and name != own:
        if revision is None:
            yield key, (f"required: {name_key} '{name}' is no local directory, so it is fetched from the Hugging Face "
                        "Hub and must be pinned to a 40-character commit sha")
    elif revision is not None:
        what = f"'{own}'" if name == own else "a local directory"
        yield key, f"only for a Hugging Face model id, and {name_key} is {what}: set it to null"


def _hidden_state(spec: int | float, n_layer: int) -> int:
    """A hidden-state index, or a fraction of depth resolved as cocoracle.activations.resolve_layers does."""
    return round(spec * n_layer) if isinstance(spec, float) else spec


def _depth_errors(p: dict[str, Any], n_layer: int) -> Iterator[tuple[str, str]]:
    """Layers beyond a model of known depth (the tiny one), and an oracle source layer that is not collected."""
    act, oracle = p["activations"], p["oracle"]
    states = f"hidden states are 0..model.tiny.n_layer ({n_layer}; 0 = embeddings)"
    layers = list(range(n_layer + 1)) if act["layers"] == "all" else [_hidden_state(x, n_layer) for x in act["layers"]]
    for layer in layers:
        if layer > n_layer:
            yield "activations.layers", f"{layer} is beyond the model's depth: {states}"
    source = _hidden_state(oracle["source_layer"], n_layer)
    if source > n_layer:
        yield "oracle.source_layer", f"{source} is beyond the model's depth: {states}"
    elif oracle_stages(p) and source not in layers:
        yield "oracle.source_layer", (f"hidden state {source} is not collected: activations.layers gives "
                                      f"{sorted(set(layers))}")
    for layer in oracle["inject_layers"] or []:
        if layer >= n_layer:
            yield "oracle.inject_layers", (f"{layer} is beyond the model's depth: activations are added before "
                                           f"blocks 0..{n_layer - 1} (model.tiny.n_layer - 1)")


def unique_problems(digits: int) -> int:
    """Number of distinct unordered operand pairs with `digits` digits each."""
    m = 9 * 10 ** (digits - 1)
    return m * (m + 1) // 2


def split_counts(data: dict[str, Any], total: int | None = None) -> list[int]:
    """Problems per digit count of `total` in-distribution problems (default: train, val and dev, drawn together;
    test is drawn apart), by largest-remainder rounding, summing exactly."""
    total = data["n_train"] + data["n_val"] + data["n_dev"] if total is None else total
    raw = [p * total for p in data["digit_probs"]]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def oracle_stages(params: dict[str, Any]) -> list[int]:
    """The latent stages that get oracles."""
    stages = params["oracle"]["stages"]
    return list(range(1, params["coconut"]["num_stages"] + 1)) if stages == "all" else sorted(stages)


def stage_epochs(train: dict[str, Any], stage: int) -> float:
    """Epochs for one curriculum stage."""
    epochs = train["epochs"]
    return float(epochs[stage] if isinstance(epochs, list) else epochs)
