"""A command trial's arguments and environment (pbt_actors.model.command_line) and the
`command` setting of an experiment, in Python and in TOML (pbt_actors.model.experiment_toml)."""

from __future__ import annotations

import json

import pytest

from pbt_actors.model.command_line import AttemptFacts, AttemptPaths, environment, expand, values
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.experiment_toml import experiment_from_toml
from pbt_actors.model.space import Categorical, Float, Int

FACTS = AttemptFacts(trial_id=12, attempt=2, generation=3, start_step=100, end_step=200,
                     hparams={"lr": 0.001, "layers": 3, "opt": "adam", "wd": 1e-05}, experiment="exp")
PATHS = AttemptPaths(checkpoint_dir="/tmp/a/checkpoint", parent_dir=None, hparams_file="/tmp/a/hparams.json",
                     tensorboard_dir="/tmp/a/tb")


def test_placeholders_are_filled() -> None:
    argv = expand(["{python}", "train.py", "--lr={lr}", "--layers", "{layers}", "--opt", "{opt}", "--wd", "{wd}",
                   "--steps", "{start_step}:{end_step}", "--save", "{checkpoint_dir}", "--resume", "{parent_dir}",
                   "--id", "t{trial_id}a{attempt}g{generation}", "{{literal}}"], values(FACTS, PATHS, "/usr/bin/py"))
    assert argv == ["/usr/bin/py", "train.py", "--lr=0.001", "--layers", "3", "--opt", "adam", "--wd", "1e-05",
                    "--steps", "100:200", "--save", "/tmp/a/checkpoint", "--resume", "",
                    "--id", "t12a2g3", "{literal}"]


def test_environment() -> None:
    env = environment(FACTS, PATHS)
    assert json.loads(env["PBT_HPARAMS"]) == dict(FACTS.hparams)
    assert (env["PBT_TRIAL_ID"], env["PBT_ATTEMPT"], env["PBT_GENERATION"]) == ("12", "2", "3")
    assert (env["PBT_START_STEP"], env["PBT_END_STEP"]) == ("100", "200")
    assert env["PBT_CHECKPOINT_DIR"] == "/tmp/a/checkpoint" and "PBT_PARENT_DIR" not in env
    with_parent = environment(FACTS, AttemptPaths("/c", "/cache/parent", "/h.json", "/tb"))
    assert with_parent["PBT_PARENT_DIR"] == "/cache/parent"


SPACE = {"lr": Float(1e-4, 0.1, log=True), "layers": Int(1, 4), "opt": Categorical(["sgd", "adam"])}


@pytest.mark.parametrize(("command", "complaint"), [
    ([], "non-empty list"),
    ("python train.py", "non-empty list"),
    (["python", 3], "must be strings"),
    (["python", "--lr", "{lrr}"], "unknown placeholder {lrr}"),
    (["python", "-c", "print({1: 2})"], "unknown placeholder {1: 2}"),
    (["python", "-c", "x = {"], "lone '{'"),
    (["", "x"], "program name is empty"),
])
def test_bad_commands_are_refused_when_the_experiment_is_made(command: object, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint.replace("{", r"\{").replace("(", r"\(")):
        Experiment(name="c", space=SPACE, objective="acc", command=command)  # type: ignore[arg-type]


def test_a_hyperparameter_named_like_a_trial_field_is_refused() -> None:
    with pytest.raises(ConfigError, match="rename the hyperparameter"):
        Experiment(name="c", space={"attempt": Int(1, 3)}, objective="acc", command=["x", "{attempt}"])


def test_command_round_trips_and_does_not_change_decisions() -> None:
    exp = Experiment(name="c", space=SPACE, objective="acc", command=["{python}", "t.py", "{lr}"])
    assert exp.command == ("{python}", "t.py", "{lr}")
    assert Experiment.from_dict(exp.to_dict()) == exp
    old = exp.to_dict()
    del old["command"]  # a store written before command trials
    assert Experiment.from_dict(old).command is None
    assert Experiment(name="c", space=SPACE, objective="acc").decision_fields() == exp.decision_fields()


TOML = """
name = "tomlexp"
command = ["{python}", "train.py", "--lr", "{lr}"]
objective = { name = "loss", goal = "min" }
population = 4
steps_per_trial = 10
max_steps = 30
policy = "truncation"

[space]
lr = { type = "float", low = 1e-4, high = 0.1, log = true }
opt = { type = "categorical", choices = ["sgd", "adam"] }

[retention]
keep_best = 2
"""


def test_toml_experiment() -> None:
    exp = experiment_from_toml(TOML, "x.toml")
    assert (exp.name, exp.population, exp.steps_per_trial, exp.max_steps, exp.policy) == ("tomlexp", 4, 10, 30,
                                                                                          "truncation")
    assert exp.command == ("{python}", "train.py", "--lr", "{lr}")
    assert exp.objective_.names == ("loss",) and exp.objective_.metrics[0].goal == "min"
    assert exp.retention.keep_best == 2 and set(exp.space_) == {"lr", "opt"}
    string_command = experiment_from_toml(TOML.replace('["{python}", "train.py", "--lr", "{lr}"]',
                                                       '"{python} train.py --lr \'{lr}\'"'), "x.toml")
    assert string_command.command == exp.command


@pytest.mark.parametrize(("text", "complaint"), [
    ("name = ", "not a valid TOML file"),
    (TOML.replace("population = 4", "populaton = 4"), "unknown key.*populaton"),
    (TOML.replace('command = ["{python}", "train.py", "--lr", "{lr}"]', ""), "'command' is required"),
    (TOML.replace("population = 4", "population = 0"), "population"),
    (TOML.replace("population = 4", 'population = "4"'), "population"),
    (TOML.replace('"{lr}"]', '"{lrr}"]'), "unknown placeholder"),
    (TOML.replace('type = "float", low = 1e-4,', 'type = "float",'), "lacks 'low'"),
    (TOML.replace('goal = "min"', 'goal = "down"'), "goal must be"),
])
def test_bad_toml_is_a_config_error_naming_the_file(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as info:
        experiment_from_toml(text, "/x/bad.toml")
    assert str(info.value).startswith("/x/bad.toml")


def test_an_experiment_file_with_both_train_and_command_is_refused(tmp_path: object) -> None:
    from pathlib import Path

    from pbt_actors.runtime.command.trial import CommandTrial
    from pbt_actors.runtime.experiment_loader import load_experiment_file

    folder = Path(str(tmp_path))
    both = folder / "both_exp.py"
    both.write_text("from pbt_actors import Experiment, Float\n"
                    "experiment = Experiment(name='b', space={'lr': Float(0.1, 1)}, objective='acc',\n"
                    "                        command=['./prog', '{lr}'])\n"
                    "def train(ctx):\n    return {}\n")
    with pytest.raises(ConfigError, match=r"both `train` and `Experiment\(command=\.\.\.\)`"):
        load_experiment_file(both)
    only = folder / "only_exp.py"
    only.write_text(both.read_text().split("def train")[0])
    experiment, train = load_experiment_file(only)
    assert isinstance(train, CommandTrial) and train.command == ("./prog", "{lr}") and train.cwd == str(folder)
    assert experiment.name == "b"
