"""TrainingArguments is the one declaration of a run's arguments: every field is an
option of `train`, `train-st` and `request` and a field of the API's request body,
with the same default, range and choices, and both give the same arguments."""

from __future__ import annotations

import click
import pytest

from trainer.api.schemas import TrainingRequest
from trainer.cli.commands import _run_spec, cli
from trainer.core.errors import ConfigurationError
from trainer.model.arguments import TrainingArguments, argument_specs

SPECS = argument_specs()
COMMANDS = ("train", "train-st", "request")
# A value other than the default for every field, as the CLI spells it and as JSON has it.
NOT_DEFAULT = {
    "model_name": "other-model", "confidence_threshold": 0.25, "seed": 7, "embedding_batch_size": 16,
    "regularization": 0.5, "class_weight": "balanced", "max_iter": 300, "embedding_cache": False,
    "embedding_backend": "onnx", "target_precision": 0.8, "embedding_features": False,
    "char_ngram_features": True, "layout_features": False, "neighbour_features": False, "page_context": False,
    "stacking_folds": 3,
    "label_issues": False, "max_label_issues": 10, "fine_tune": False, "fine_tune_max_pairs": 64,
    "fine_tune_max_seconds": 30.0,
}  # fmt: skip


def _option(command: str, name: str) -> click.Option:
    found = [param for param in cli.commands[command].params if param.name == name]
    assert len(found) == 1, f"{command} has no option for {name}"
    return found[0]


def _cli_arguments(argv: list[str]) -> TrainingArguments:
    context = cli.commands["request"].make_context("request", argv)
    options = {name: context.params[name] for name in (*SPECS, "as_of", "from_snapshot", "from_csv")}
    return _run_spec(options)[0]


def test_not_default_names_every_field():
    assert set(NOT_DEFAULT) == set(SPECS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_is_an_option_with_its_default_range_and_choices(command):
    for name, (default, kind, spec) in SPECS.items():
        option = _option(command, name)
        flag = "--" + name.replace("_", "-")
        assert flag in option.opts and option.default == default and option.help == spec.help, name
        if kind is bool:
            assert option.is_flag and "--no-" + name.replace("_", "-") in option.secondary_opts, name
        elif spec.choices is not None:
            assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == spec.choices, name
        elif kind in (int, float):
            assert (option.type.min, option.type.max, option.type.min_open) == (
                spec.minimum, spec.maximum, spec.exclusive_minimum
            ), name
        for alias in spec.aliases:
            assert alias.split("/")[0] in option.opts, (name, alias)


def test_every_field_is_an_api_field_with_its_default_range_and_choices():
    properties = TrainingRequest.model_json_schema()["properties"]
    assert set(properties) == set(SPECS) | {"source"}
    for name, (default, kind, spec) in SPECS.items():
        schema = properties[name]
        assert schema["default"] == default and schema["description"] == spec.help, name
        if spec.choices is not None:
            assert tuple(schema["enum"]) == spec.choices, name
        elif kind is bool:
            assert schema["type"] == "boolean", name
        elif kind in (int, float):
            assert schema["type"] == ("integer" if kind is int else "number"), name
            low = "exclusiveMinimum" if spec.exclusive_minimum else "minimum"
            assert (schema.get(low), schema.get("maximum")) == (spec.minimum, spec.maximum), name
        else:
            assert (schema["pattern"], schema["maxLength"]) == (spec.pattern, spec.max_length), name


def test_the_cli_and_the_api_give_the_same_arguments():
    argv = []
    for name, value in NOT_DEFAULT.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    from_cli = _cli_arguments(argv)
    body = TrainingRequest.model_validate(NOT_DEFAULT).model_dump(exclude={"source"})
    assert from_cli == TrainingArguments(**body) == TrainingArguments(**NOT_DEFAULT)
    assert _cli_arguments([]) == TrainingArguments() == TrainingArguments(**TrainingRequest().model_dump(exclude={"source"}))


def test_earlier_option_spellings_still_work():
    old = _cli_arguments(["--batch-size", "8", "--no-embedding", "--no-layout", "--no-neighbours", "--no-char-ngrams",
                          "--embedding"])  # fmt: skip
    assert (old.embedding_batch_size, old.embedding_features, old.char_ngram_features) == (8, True, False)
    assert (old.layout_features, old.neighbour_features) == (False, False)


@pytest.mark.parametrize("name", [name for name, (_, kind, spec) in SPECS.items() if spec.maximum is not None])
def test_a_value_past_a_fields_range_is_refused_everywhere(name):
    _, kind, spec = SPECS[name]
    too_big = spec.maximum + (1 if kind is int else spec.maximum)
    with pytest.raises(ConfigurationError, match=name):
        TrainingArguments(**{name: too_big})
    with pytest.raises(ValueError, match=name):
        TrainingRequest.model_validate({name: too_big})
    with pytest.raises(click.BadParameter):
        _cli_arguments(["--" + name.replace("_", "-"), str(too_big)])
