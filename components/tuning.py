"""Hyper-parameter tuning by successive halving, as tasks of the pipeline's own DAG.

The search space (YAML: parameter -> {log_uniform: [low, high]}, {uniform: [low, high]} or
{choice: [values]}), seeded sampling, the round plan (trials and epochs per round), the
selection of each round's survivors and the table of every trial. Plain Python, no Keras:
the sample and select steps import it without TensorFlow.
"""
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from components import configs
from components.errors import TlpError

KINDS = ("log_uniform", "uniform", "choice")
RANGE_TYPES = ("Float", "Integer")  # KFP parameter types a range can be drawn for.


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: its kind and (low, high) or its choices."""
    name: str
    kind: str
    values: tuple
    type: str  # The parameter's KFP type: Float, Integer, String or Boolean.

    def at(self, unit: float):
        """The value at quantile unit (in [0, 1)) of the dimension's distribution."""
        if self.kind == "choice":
            return self.values[min(len(self.values) - 1, math.floor(unit * len(self.values)))]
        low, high = self.values
        value = (math.exp(math.log(low) + unit * (math.log(high) - math.log(low)))
                 if self.kind == "log_uniform" else low + unit * (high - low))
        if self.type == "Integer":  # The nearest integer inside the range.
            return min(math.floor(high), max(math.ceil(low), round(value)))
        return float(f"{value:.4g}")  # 4 significant digits read well in a table.


def tunable_types() -> dict[str, str]:
    """Parameter -> KFP type of everything a trial may search: the trial step's parameters
    (the train and fine_tune steps' ones) but those the tuner sets or that must stay fixed,
    plus configs.TUNE_AUGMENT_SCALE."""
    from components import kfp_steps  # Lazily: kfp is only needed for the step's signature.

    inputs = kfp_steps.tune_trial.component_spec.inputs
    types = {name: spec.type for name, spec in inputs.items()
             if spec.type in ("Float", "Integer", "String", "Boolean")
             and name not in configs.TUNE_FIXED}
    return {**types, configs.TUNE_AUGMENT_SCALE: "Float"}


def _dimension(name: str, spec, source: str, types: dict[str, str]) -> Dimension:
    where = f"search space {source}: {name}"
    if name not in types:
        raise TlpError(f"{where} cannot be searched: the trials share one preprocessed "
                       "dataset (so no preprocess parameter), the tuner sets the epochs, and "
                       f"{', '.join(p for p in configs.TUNE_FIXED if 'epochs' not in p)} "
                       f"stay fixed. Searchable: {', '.join(sorted(types))}.")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise TlpError(f"{where}: write one of {{log_uniform: [LOW, HIGH]}}, "
                       "{uniform: [LOW, HIGH]}, {choice: [A, B, ...]}.")
    kind, values = next(iter(spec.items()))
    kfp_type = types[name]
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise TlpError(f"{where}: choice needs a non-empty list, e.g. {{choice: [a, b]}}.")
        return Dimension(name, kind, tuple(_typed(where, kfp_type, v) for v in values),
                         kfp_type)
    if kfp_type not in RANGE_TYPES:
        raise TlpError(f"{where} is a {kfp_type} parameter: give its values with "
                       "{choice: [...]} rather than a range.")
    try:
        # YAML reads 1e-5 (no dot) as a string: take any number written as one.
        low, high = (float(v) for v in values
                     if not isinstance(v, (bool, list, dict)))  # float(True) would pass.
    except (TypeError, ValueError) as error:
        raise TlpError(f"{where}: {kind} needs [LOW, HIGH], two numbers.") from error
    if not low < high:
        raise TlpError(f"{where}: the range [{low:g}, {high:g}] is empty; write LOW < HIGH "
                       "(for one value, set the parameter itself instead).")
    if kind == "log_uniform" and low <= 0:
        raise TlpError(f"{where}: log_uniform needs LOW > 0 (got {low:g}); use uniform for "
                       "a range from 0.")
    if kfp_type == "Integer" and math.floor(high) < math.ceil(low):
        raise TlpError(f"{where}: no integer lies in [{low:g}, {high:g}].")
    return Dimension(name, kind, (low, high), kfp_type)


def _typed(where: str, kfp_type: str, value):
    """A choice as the parameter's type (fine_tune_layers is a string: 30 means '30')."""
    try:
        if kfp_type == "String":
            return str(value)
        if kfp_type == "Boolean":
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        number = float(value)
        if kfp_type == "Integer" and number != int(number):
            raise ValueError(value)
        return int(number) if kfp_type == "Integer" else number
    except (TypeError, ValueError) as error:
        raise TlpError(f"{where}: choice {value!r} is not a {kfp_type}.") from error


def parse_space(space: dict, source: str, types: dict[str, str]) -> dict[str, Dimension]:
    """The search space as Dimensions, in name order (so sampling does not depend on the
    file's order); TlpError naming the source and the parameter for any mistake."""
    if not isinstance(space, dict) or not space:
        raise TlpError(f"search space {source}: write a mapping of parameter: "
                       "{log_uniform|uniform|choice: ...}, at least one.")
    return {name: _dimension(str(name), space[name], source, types)
            for name in sorted(space, key=str)}


def check_values(dimensions: dict[str, Dimension], base: dict,
                 validate: Callable[[dict], object], source: str) -> None:
    """Passes each range end and each choice, as the pipeline parameters it becomes (over
    base), through validate (the CLI's parameter check), so that a value a step would
    reject fails before any work, naming the file, the parameter and the fix."""
    for dim in dimensions.values():
        for value in dim.values:
            try:
                validate({**base, **expand({dim.name: value}, base)})
            except TlpError as error:
                what = "choice" if dim.kind == "choice" else f"{dim.kind} range end"
                raise TlpError(f"search space {source}: {dim.name}={value} (a {what}) would "
                               f"be rejected by the steps: {error} Narrow the range or drop "
                               "the value.") from error


def load_space(path: str | Path | None) -> dict:
    """The YAML search space file as a mapping; None: configs.TUNE_SEARCH_SPACE."""
    if path is None:
        return json.loads(json.dumps(configs.TUNE_SEARCH_SPACE))  # A copy.
    path = Path(path)
    if not path.is_file():
        raise TlpError(f"search space {path} does not exist.")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise TlpError(f"search space {path} is not valid YAML: {error}") from error


def sample(dimensions: dict[str, Dimension], trials: int, seed: int) -> list[dict]:
    """trials configurations, each {parameter: value}; the same for the same seed. Latin
    hypercube: each dimension's range is cut into `trials` equally likely strata and every
    stratum drawn once, so that a few trials still span each range (and every choice of up
    to `trials` choices), as independent draws often do not."""
    if trials < 1:
        return []
    # Imported here: scipy.stats takes 0.8 s, which train and fine_tune (they import this
    # module for tuning.apply) need not pay.
    import numpy as np
    from scipy.stats import qmc

    unit = qmc.LatinHypercube(d=len(dimensions), rng=np.random.default_rng(seed))
    return [{name: dim.at(float(u)) for (name, dim), u in zip(dimensions.items(), point)}
            for point in unit.random(trials)]


def configurations(dimensions: dict[str, Dimension], trials: int, seed: int) -> list[dict]:
    """The first round's trials: trial 0 the pipeline's own configuration (each searched
    parameter None, the value the pipeline sets, which only the trial step knows), so tuning
    never ends below the untuned run on validation; the others sampled."""
    return [dict.fromkeys(dimensions)] + sample(dimensions, trials - 1, seed)


def resolve(item: dict, base: dict) -> dict:
    """item with the parameters it leaves to the pipeline (its "configured" list) set to
    base's values (configs.TUNE_AUGMENT_SCALE: 1, the configured strengths)."""
    configured = {name: 1.0 if name == configs.TUNE_AUGMENT_SCALE else base[name]
                  for name in item.get("configured", [])}
    params = {**configured, **item["params"]}
    return {**item, "params": {name: params[name] for name in sorted(params)}}


def expand(config: dict, base: dict) -> dict:
    """A sampled configuration as pipeline parameters: configs.TUNE_AUGMENT_SCALE becomes
    the augmentation strengths it scales (of the base values), the rest stays."""
    overrides = {name: value for name, value in config.items()
                 if name != configs.TUNE_AUGMENT_SCALE}
    if configs.TUNE_AUGMENT_SCALE in config:
        scale = config[configs.TUNE_AUGMENT_SCALE]
        overrides.update({name: float(f"{base[name] * scale:.4g}")
                          for name in configs.TUNE_AUGMENT_SCALED})
    return overrides


def apply(base: dict, overrides: dict) -> dict:
    """base (a step's parameters) with the overrides, each of its base value's type: a
    dict passed between kfp.local's tasks turns ints into floats."""
    def typed(name: str, value):
        kind = type(base.get(name))
        return kind(value) if kind in (int, float) and not isinstance(value, bool) else value

    return {**base, **{name: typed(name, value) for name, value in overrides.items()}}


def trial_parameters(base: dict, item: dict) -> tuple[dict, dict]:
    """(the trial's overrides as pipeline parameters, base with them and the round's
    epochs): what a trial trains with."""
    overrides = expand(item["params"], base)
    return overrides, {**apply(base, overrides), "epochs": int(item["epochs"]),
                       "fine_tune_epochs": int(item["fine_tune_epochs"])}


@dataclass(frozen=True)
class Round:
    trials: int
    epochs: int  # Of the head (train phase).
    fine_tune_epochs: int
    train_fraction: float  # The share of the train split its trials train on.


def plan(trials: int, rounds: int, epochs: int, fine_tune_epochs: int,
         keep: float = configs.TUNE_KEEP, fraction: float = configs.TUNE_TRAIN_FRACTION,
         budget: float = configs.TUNE_BUDGET) -> list[Round]:
    """Successive halving with data as the resource: each round keeps the best `keep`
    fraction (at least one trial) and gives the survivors 1/keep times the share of the
    train split, from `fraction` up to all of it. Every round has the pipeline's head epochs
    (cheap: on cached features) and the same fine-tune epochs, so that no round favours what
    learns fast: the most, up to the pipeline's, whose fine-tune work (trials x share x
    epochs) stays within `budget` untuned runs' (at least one epoch)."""
    counts, count = [], trials
    for _ in range(rounds):
        counts.append(count)
        count = max(1, math.ceil(count * keep))
    shares = [min(1.0, fraction / keep ** index) for index in range(rounds)]
    work = sum(c * s for c, s in zip(counts, shares))  # Per fine-tune epoch.
    # The epsilon: a budget met exactly (7.5 / 1.5) must give 5 epochs, not 4.99... -> 4.
    tune = min(fine_tune_epochs, max(1, math.floor(budget * fine_tune_epochs / work + 1e-9)))
    return [Round(c, epochs, tune, float(f"{s:.4g}")) for c, s in zip(counts, shares)]


def items(configurations: list[dict], round_index: int, round_: Round,
          ids: list[int] | None = None) -> list[dict]:
    """The ParallelFor items of a round: one per trial, its id, round, epochs, share of the
    train split and parameters (as sampled; those left to the pipeline, None, listed as
    "configured": KFP passes no None between tasks)."""
    ids = ids if ids is not None else list(range(len(configurations)))

    def item(trial_id: int, config: dict) -> dict:
        entry = {"trial": trial_id, "round": round_index, "epochs": round_.epochs,
                 "fine_tune_epochs": round_.fine_tune_epochs,
                 "train_fraction": round_.train_fraction,
                 "params": {k: v for k, v in config.items() if v is not None}}
        configured = [name for name, value in config.items() if value is None]
        return {**entry, "configured": configured} if configured else entry

    return [item(trial_id, config) for trial_id, config in zip(ids, configurations)]


def fine_tune_work(rounds: list[Round], fine_tune_epochs: int) -> float:
    """The trials' fine-tune steps over an untuned run's: what dominates tuning's cost."""
    work = sum(r.trials * r.train_fraction * r.fine_tune_epochs for r in rounds)
    return work / fine_tune_epochs if fine_tune_epochs else 0.0


def describe_budget(rounds: list[Round], fine_tune_epochs: int,
                    steps_per_epoch: int | None = None) -> str:
    """The trial budget, one line per round, and the total (steps when known), with the
    trials' fine-tune work in untuned runs."""
    lines, total_epochs, total_steps = [], 0, 0
    for index, r in enumerate(rounds):
        total_epochs += r.trials * (r.epochs + r.fine_tune_epochs)
        if steps_per_epoch:
            total_steps += (r.trials * (r.epochs + r.fine_tune_epochs)
                            * math.ceil(steps_per_epoch * r.train_fraction))
        lines.append(f"  round {index + 1}: {r.trials} trial(s) x ({r.epochs} head + "
                     f"{r.fine_tune_epochs} fine-tune epochs) on {r.train_fraction:.0%} of "
                     "the train split")
    steps = (f", about {total_steps:,} training steps ({steps_per_epoch} per epoch on the "
             "whole train split)" if steps_per_epoch else "")
    trials = rounds[0].trials if rounds else 0
    return "\n".join([f"tuning: {trials} trials in {len(rounds)} round(s), {total_epochs} "
                      f"epochs in all{steps}; their fine-tuning costs about "
                      f"{fine_tune_work(rounds, fine_tune_epochs):.1f} untuned runs' "
                      "fine-tuning; then the pipeline trains with the best"] + lines)


def score(train_history: dict, fine_tune_history: dict) -> tuple[float, float]:
    """(val_accuracy, val_loss) of the model a trial ends with: training keeps the epoch
    with the lowest val_loss across both phases."""
    epochs = [(loss, accuracy)
              for history in (train_history, fine_tune_history)
              for loss, accuracy in zip(history.get("val_loss", []),
                                        history.get("val_accuracy", []))]
    loss, accuracy = min(epochs)
    return accuracy, loss


def trial_row(item: dict, overrides: dict, val_accuracy: float, val_loss: float,
              seconds: float, val_examples: int) -> dict:
    """One row of the trials table. (kfp.local hands ints in a dict over as floats.)"""
    return {"trial": int(item["trial"]), "round": int(item["round"]),
            "epochs": int(item["epochs"]), "fine_tune_epochs": int(item["fine_tune_epochs"]),
            "train_fraction": float(item["train_fraction"]),
            "params": item["params"], "overrides": overrides,
            "val_accuracy": float(val_accuracy), "val_loss": float(val_loss),
            "val_examples": int(val_examples), "seconds": round(float(seconds), 1)}


def ranked(rows: list[dict]) -> list[dict]:
    """Best first: highest val_accuracy, then lowest val_loss, then the earlier trial."""
    return sorted(rows, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["trial"]))


def best_of(rows: list[dict]) -> tuple[dict, str]:
    """A round's best: its top-ranked trial, unless the run's own configuration (trial 0)
    is among the rows and the top one beats its val accuracy by no more than one standard
    error (binomial, on the validation images): a gain within the validation split's noise
    is no reason to leave the configuration the user chose. Returns the row and, when
    trial 0 is kept so, why."""
    top = ranked(rows)[0]
    configured = next((row for row in rows if row["trial"] == 0), top)
    accuracy, examples = configured["val_accuracy"], configured["val_examples"]
    error = math.sqrt(accuracy * (1 - accuracy) / examples)
    gain = top["val_accuracy"] - accuracy
    if top is configured or gain > error:
        return top, ""
    return configured, (f"trial {top['trial']} beats the run's own configuration (trial 0) by "
                        f"{gain:.4f} val accuracy, within one standard error ({error:.4f} on "
                        f"{examples:,} validation images): the configuration stays")


def new_table(space: dict, rounds: list[Round], seed: int) -> dict:
    return {"space": space, "seed": seed, "plan": [asdict(r) for r in rounds],
            "trials": [], "complete": False, "best": None, "best_note": ""}


def select(table: dict, results: list[dict]) -> tuple[dict, list[dict]]:
    """Adds a round's results to the table; returns it and the next round's items (the
    survivors with that round's epochs), or no items after the last round, whose best trial
    becomes the table's best."""
    if not results:
        raise TlpError("tuning: no trial of the round reported a result.")
    table = {**table, "trials": table["trials"] + results}
    round_index = int(results[0]["round"])
    order = ranked(results)
    plan_ = [Round(**r) for r in table["plan"]]
    table["best"], table["best_note"] = best_of(results)
    if round_index + 1 >= len(plan_):
        table["complete"] = True
        return table, []
    nxt = plan_[round_index + 1]
    survivors = order[:nxt.trials]
    return table, items([row["params"] for row in survivors], round_index + 1, nxt,
                        [row["trial"] for row in survivors])


def finish_round(result_paths: list[str], table_path: str, out_path: str
                 ) -> tuple[dict, list[dict]]:
    """The select steps' work: reads the round's trial rows and the table so far, selects,
    prints the round, writes the updated table; returns it and the next round's items."""
    rows = [json.loads(Path(path).read_text()) for path in result_paths]
    table, survivors = select(json.loads(Path(table_path).read_text()), rows)
    print_selection(table, rows, len(survivors) or 1)
    Path(out_path).write_text(dumps(table))
    return table, survivors


def print_selection(table: dict, results: list[dict], kept: int) -> None:
    """A round's trials, why the configuration stays if it does, and the best after the
    last round."""
    print_round(results, kept)
    if table["best_note"]:
        print(f"tune: {table['best_note']}", flush=True)
    if table["complete"]:
        best = table["best"]
        print(f"tune: best trial {best['trial']}: val_accuracy {best['val_accuracy']:.4f}, "
              f"{best['overrides']}", flush=True)


def print_round(results: list[dict], kept: int) -> None:
    """The round's trials, best first, on the step's log; the kept ones marked."""
    for rank, row in enumerate(ranked(results)):
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
        mark = "kept" if rank < kept else "    "
        configured = " (the pipeline's configuration)" if row["trial"] == 0 else ""
        print(f"tune: {mark} trial {row['trial']:>2} round {row['round'] + 1} val_accuracy "
              f"{row['val_accuracy']:.4f} val_loss {row['val_loss']:.4f} "
              f"{row['seconds']:.0f} s  {params}{configured}", flush=True)


def best_metrics(best: dict) -> dict[str, float]:
    """The best trial as KFP Metrics scalars: its scores and its numeric parameters."""
    metrics = {"val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
               "trial": float(best["trial"])}
    for name, value in best["overrides"].items():
        try:
            metrics[name] = float(value)
        except (TypeError, ValueError):  # A choice such as fine_tune_layers=all.
            pass
    return metrics


def dumps(table: dict) -> str:
    return json.dumps(table, indent=2)
