"""Tuning's logic (components/tuning.py): the search space and its errors, seeded sampling,
the round plan, successive-halving selection; and the CLI's checks before any work."""
import math

import pytest

from components import configs, tuning
from components.errors import TlpError
from pipelines import cli

TYPES = {"learning_rate": "Float", "dropout": "Float", "batch_size": "Integer",
         "fine_tune_layers": "String", "head_batch_norm": "Boolean",
         configs.TUNE_AUGMENT_SCALE: "Float"}


def default_dimensions():
    return tuning.parse_space(tuning.load_space(None), "(the default)", tuning.tunable_types())


def test_sampling_is_deterministic_for_a_seed_and_stays_in_the_space():
    dimensions = default_dimensions()
    first = tuning.sample(dimensions, 8, seed=42)
    assert first == tuning.sample(dimensions, 8, seed=42)
    assert first != tuning.sample(dimensions, 8, seed=43)
    # The file's order does not matter: dimensions are drawn in name order.
    reordered = dict(reversed(list(tuning.load_space(None).items())))
    assert tuning.sample(tuning.parse_space(reordered, "f", tuning.tunable_types()), 8,
                         seed=42) == first
    for config in first:
        assert set(config) == set(configs.TUNE_SEARCH_SPACE)
        assert 1e-4 <= config["learning_rate"] <= 1e-2
        assert 0 <= config["dropout"] <= 0.5
        assert config["fine_tune_layers"] in ("10", "30", "60", "100")
        assert config["batch_size"] in (16, 32, 64)
    # Latin hypercube: each of 8 equally likely strata of every range is drawn once (on a
    # log scale for log-uniform ranges), and 8 draws take each of the 4 choices.
    rates = sorted(math.log10(c["learning_rate"]) for c in first)  # In [-4, -2].
    assert [math.floor((rate + 4) / 2 * 8) for rate in rates] == list(range(8))
    assert sorted(math.floor(c["dropout"] / 0.5 * 8) for c in first) == list(range(8))
    assert {c["fine_tune_layers"] for c in first} == {"10", "30", "60", "100"}
    assert {c["batch_size"] for c in first} == {16, 32, 64}


def test_trial_0_is_the_pipeline_s_configuration_and_the_others_are_drawn():
    dimensions = default_dimensions()
    trials = tuning.configurations(dimensions, 8, seed=42)
    assert trials[0] == dict.fromkeys(configs.TUNE_SEARCH_SPACE)
    assert trials[1:] == tuning.sample(dimensions, 7, seed=42)
    base = {"learning_rate": 0.003, "fine_tune_layers": "all", "dropout": 0.2,
            "fine_tune_learning_rate": 2e-5, "augment_rotation": 0.1, "augment_zoom": 0.2,
            "augment_translation": 0.1, "augment_contrast": 0.2, "augment_brightness": 0.2,
            "batch_size": 32, "label_smoothing": 0.0, "epochs": 9, "fine_tune_epochs": 4}
    item = tuning.resolve(tuning.items(trials, 0, tuning.Round(8, 1, 1, 0.5))[0], base)
    assert item["params"] == {"learning_rate": 0.003, "fine_tune_layers": "all",
                              "dropout": 0.2, "fine_tune_learning_rate": 2e-5,
                              "augment_scale": 1.0, "batch_size": 32,
                              "label_smoothing": 0.0}
    overrides, parameters = tuning.trial_parameters(base, item)
    assert parameters == {**base, "epochs": 1, "fine_tune_epochs": 1}
    drawn = tuning.items(trials, 0, tuning.Round(8, 1, 1, 0.5))[1]
    assert tuning.resolve(drawn, base) == drawn


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-5 as a string; the space takes it as the number it means."""
    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: {log_uniform: [1e-5, 1e-3]}\n")
    [dimension] = tuning.parse_space(tuning.load_space(path), str(path), TYPES).values()
    assert dimension.values == (1e-5, 1e-3)


def test_integer_ranges_draw_integers_and_choices_take_the_parameter_type():
    dimensions = tuning.parse_space({"batch_size": {"uniform": [7.5, 64]},
                                     "fine_tune_layers": {"choice": [10, "all"]}}, "f", TYPES)
    for config in tuning.sample(dimensions, 20, seed=0):
        assert isinstance(config["batch_size"], int) and 8 <= config["batch_size"] <= 64
        assert config["fine_tune_layers"] in ("10", "all")


def test_the_plan_keeps_a_third_and_gives_survivors_three_times_the_data():
    assert tuning.plan(8, 2, epochs=10, fine_tune_epochs=5) == [
        tuning.Round(8, 10, 2, 0.1111), tuning.Round(3, 10, 2, 0.3333)]
    assert tuning.plan(9, 3, epochs=9, fine_tune_epochs=9) == [
        tuning.Round(9, 9, 3, 0.1111), tuning.Round(3, 9, 3, 0.3333),
        tuning.Round(1, 9, 3, 1.0)]
    assert tuning.plan(2, 2, epochs=1, fine_tune_epochs=0) == [
        tuning.Round(2, 1, 0, 0.1111), tuning.Round(1, 1, 0, 0.3333)]
    # A budget too small for one fine-tune epoch still gets one; none past the pipeline's.
    assert tuning.plan(30, 2, 10, 5)[0].fine_tune_epochs == 1
    assert tuning.plan(2, 2, 10, 2, fraction=0.1)[0].fine_tune_epochs == 2


@pytest.mark.parametrize("trials,rounds,fine_tune_epochs", [
    (8, 2, 5), (8, 3, 5), (12, 2, 5), (4, 2, 10), (16, 3, 3), (9, 2, 1)])
def test_the_trials_fine_tuning_stays_within_the_budget(trials, rounds, fine_tune_epochs):
    plan = tuning.plan(trials, rounds, 10, fine_tune_epochs)
    assert len({r.fine_tune_epochs for r in plan}) == 1  # No round favours fast learners.
    work = tuning.fine_tune_work(plan, fine_tune_epochs)
    assert work <= configs.TUNE_BUDGET or plan[0].fine_tune_epochs == 1
    # The most epochs that fit: one more would not.
    if plan[0].fine_tune_epochs < fine_tune_epochs:
        assert work * (plan[0].fine_tune_epochs + 1) / plan[0].fine_tune_epochs \
            > configs.TUNE_BUDGET


def test_the_budget_counts_steps_on_each_round_s_share_of_the_data():
    budget = tuning.describe_budget(tuning.plan(8, 2, 10, 5), 5, steps_per_epoch=90)
    # 8 x 12 epochs x 10 steps (1/9 of 90), 3 x 12 x 30 (1/3): 960 + 1,080.
    assert budget.splitlines() == [
        "tuning: 8 trials in 2 round(s), 132 epochs in all, about 2,040 training steps "
        "(90 per epoch on the whole train split); their fine-tuning costs about 0.8 "
        "untuned runs' fine-tuning; then the pipeline trains with the best",
        "  round 1: 8 trial(s) x (10 head + 2 fine-tune epochs) on 11% of the train split",
        "  round 2: 3 trial(s) x (10 head + 2 fine-tune epochs) on 33% of the train split"]


def row(item: dict, accuracy: float, loss: float = 1.0) -> dict:
    return tuning.trial_row(item, item["params"], accuracy, loss, seconds=2.0,
                            val_examples=1000)


@pytest.mark.parametrize("drawn_accuracy, best", [(0.85, 0), (0.86, 3), (0.79, 0)])
def test_a_trial_replaces_the_configuration_only_beyond_the_noise(drawn_accuracy, best):
    """On 1,000 validation images an accuracy of 0.84 has a standard error of 0.0116: 0.85
    is within it, 0.86 beyond."""
    rounds = tuning.plan(2, 1, epochs=1, fine_tune_epochs=1)
    first = tuning.items([{"learning_rate": 1e-3}] * 4, 0, rounds[0])
    table = tuning.new_table({"learning_rate": {"log_uniform": [1e-4, 1e-2]}}, rounds, 1)
    table, _ = tuning.select(table, [row(item, accuracy) for item, accuracy
                                     in zip(first, (0.84, 0.5, 0.6, drawn_accuracy))])
    assert table["complete"] and table["best"]["trial"] == best
    assert ("within one standard error (0.0116 on 1,000 validation images)"
            in table["best_note"]) == (drawn_accuracy == 0.85)


def test_each_round_keeps_the_right_trials_and_the_last_names_the_best():
    rounds = tuning.plan(8, 2, epochs=10, fine_tune_epochs=5)
    configs_ = [{"learning_rate": 0.001 * (i + 1)} for i in range(8)]
    first = tuning.items(configs_, 0, rounds[0])
    # Trials 5, 2 and (on a tie with 7, by the lower val_loss) 6 are the best three.
    accuracies = [0.1, 0.2, 0.8, 0.3, 0.4, 0.9, 0.7, 0.7]
    losses = [1.0] * 6 + [0.5, 0.6]
    table = tuning.new_table({"learning_rate": {"log_uniform": [1e-3, 1e-2]}}, rounds, 42)
    table, survivors = tuning.select(table, [row(item, a, l) for item, a, l
                                             in zip(first, accuracies, losses)])
    assert [s["trial"] for s in survivors] == [5, 2, 6]
    assert all((s["round"], s["epochs"], s["fine_tune_epochs"], s["train_fraction"])
               == (1, 10, 2, 0.3333) for s in survivors)
    assert [s["params"] for s in survivors] == [configs_[5], configs_[2], configs_[6]]
    assert not table["complete"] and len(table["trials"]) == 8
    # With more epochs trial 2 overtakes trial 5: the last round decides.
    table, survivors = tuning.select(table, [row(s, a) for s, a in
                                             zip(survivors, [0.85, 0.95, 0.6])])
    assert survivors == [] and table["complete"] and len(table["trials"]) == 11
    assert table["best"]["trial"] == 2 and table["best"]["overrides"] == configs_[2]
    assert tuning.best_metrics(table["best"])["learning_rate"] == 0.003


def test_score_is_that_of_the_epoch_training_keeps():
    train = {"val_loss": [0.9, 0.5, 0.7], "val_accuracy": [0.5, 0.8, 0.9]}
    fine_tune = {"val_loss": [0.6, 0.4], "val_accuracy": [0.7, 0.85]}
    assert tuning.score(train, fine_tune) == (0.85, 0.4)
    assert tuning.score(train, {}) == (0.8, 0.5)


def test_augment_scale_becomes_the_strengths_and_overrides_keep_the_parameter_types():
    base = {name: 0.1 for name in configs.TUNE_AUGMENT_SCALED} | {"batch_size": 32,
                                                                   "dropout": 0.2}
    overrides = tuning.expand({configs.TUNE_AUGMENT_SCALE: 1.5, "dropout": 0.3}, base)
    assert overrides == {"dropout": 0.3} | {name: 0.15 for name in configs.TUNE_AUGMENT_SCALED}
    # kfp.local passes dicts with ints as floats.
    applied = tuning.apply(base, {"batch_size": 16.0, "dropout": 0.3})
    assert applied["batch_size"] == 16 and isinstance(applied["batch_size"], int)


@pytest.mark.parametrize("space, message", [
    ({"image_size": {"choice": [96]}}, "image_size cannot be searched: the trials share one "
                                       "preprocessed dataset"),
    ({"epochs": {"choice": [3]}}, "epochs cannot be searched"),
    ({"learning_rat": {"uniform": [0.1, 0.2]}}, "learning_rat cannot be searched"),
    ({"learning_rate": {"uniform": [0.01, 0.001]}}, "the range [0.01, 0.001] is empty"),
    ({"learning_rate": {"log_uniform": [0, 0.1]}}, "log_uniform needs LOW > 0"),
    ({"learning_rate": {"normal": [0, 1]}}, "write one of {log_uniform: [LOW, HIGH]}"),
    ({"learning_rate": {"uniform": [0.1]}}, "uniform needs [LOW, HIGH], two numbers"),
    ({"learning_rate": {"uniform": [0.1, "a"]}}, "uniform needs [LOW, HIGH], two numbers"),
    ({"learning_rate": {"uniform": "0.1"}}, "uniform needs [LOW, HIGH], two numbers"),
    ({"learning_rate": {"choice": []}}, "choice needs a non-empty list"),
    ({"batch_size": {"choice": [16, 2.5]}}, "choice 2.5 is not a Integer"),
    ({"batch_size": {"uniform": [3.2, 3.8]}}, "no integer lies in [3.2, 3.8]"),
    ({"fine_tune_layers": {"uniform": [10, 50]}}, "is a String parameter: give its values "
                                                  "with {choice: [...]}"),
    ({}, "at least one"),
])
def test_bad_spaces_name_the_file_the_parameter_and_the_fix(space, message):
    with pytest.raises(TlpError, match="search space space.yaml") as error:
        tuning.parse_space(space, "space.yaml", tuning.tunable_types() | TYPES)
    assert message in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("dropout: {uniform: [0.0, 1.2]}\n",
     "dropout=1.2 (a uniform range end) would be rejected by the steps: dropout=1.2 must be "
     "in [0, 1). Narrow the range or drop the value."),
    ("augment_scale: {uniform: [0.5, 12]}\n", "augment_scale=12.0 (a uniform range end) "
                                              "would be rejected by the steps: augment_zoom"),
    ("optimizer: {choice: [adam, lion]}\n", "optimizer=lion (a choice) would be rejected"),
    ("learning_rate: {log_uniform: [0.01, 0.001]}\n", "the range [0.01, 0.001] is empty"),
    ("learning_rate: [0.1\n", "is not valid YAML"),
])
def test_compile_stops_on_a_bad_space_before_any_work(tmp_path, capsys, text, message):
    space, out = tmp_path / "space.yaml", tmp_path / "p.yaml"
    space.write_text(text)
    assert cli.main(["compile", "-o", str(out), "--tune-trials", "4",
                     "--search-space", str(space)]) == 2
    error = capsys.readouterr().err
    assert str(space) in error and message in error
    assert not out.exists()


def test_search_space_without_trials_and_bad_counts_are_refused(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), "--search-space", "x.yaml"]) == 2
    assert "--search-space needs --tune-trials N" in capsys.readouterr().err
    assert cli.main(["compile", "-o", str(out), "--tune-trials", "4", "--tune-rounds",
                     "0"]) == 2
    assert "rounds and parallelism 1 or more" in capsys.readouterr().err
    assert cli.main(["compile", "-o", str(out), "--tune-trials", "1"]) == 2
    assert "2 or more (trial 0 is the pipeline's own configuration)" in capsys.readouterr().err
    assert cli.main(["compile", "-o", str(out), "--tune-trials", "4", "--search-space",
                     str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert not out.exists()
