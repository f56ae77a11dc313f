"""`tlp`: run the pipeline locally, compile it, submit it to a cluster, predict with a model.

Every pipeline parameter is a flag (--image-size 96) and a config file key (image_size: 96);
flags win over the config file, which wins over the defaults in components/configs.py.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import yaml

# Quiet TensorFlow's C++ start-up chatter here and in the steps kfp.local starts.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components import configs  # noqa: E402
from components.errors import TlpError  # noqa: E402
from components.keras_backend import import_tensorflow_quietly  # noqa: E402

# KFP parameter types -> Python types for argparse.
_TYPES = {"String": str, "Integer": int, "Double": float, "Float": float,
          "Boolean": lambda s: s.lower() in ("1", "true", "yes")}


def _pipeline_inputs() -> dict:
    from pipelines.pipeline import create_pipeline

    return create_pipeline().component_spec.inputs


def _add_parameter_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline parameters (defaults in brackets)")
    group.add_argument("--config", type=Path,
                       help="YAML or JSON file of parameter: value pairs; flags override it")
    for name, spec in _pipeline_inputs().items():
        default = "required" if spec.default is None else spec.default
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=_TYPES[spec.type],
                           default=argparse.SUPPRESS,
                           # argparse formats help with %: "5%" alone would break --help.
                           help=f"{spec.description.replace('%', '%%')} [{default}]")


def _read_config(path: Path, inputs: dict) -> dict:
    if not path.is_file():
        raise TlpError(f"config file {path} does not exist.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise TlpError(f"config file {path} is not valid YAML/JSON: {error}") from error
    if not isinstance(values, dict):
        raise TlpError(f"config file {path} must hold a mapping of parameter: value.")
    result = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in inputs:
            raise TlpError(f"config file {path}: unknown parameter {key!r}; known: "
                           f"{', '.join(inputs)}.")
        try:
            result[name] = _TYPES[inputs[name].type](value)
        except (TypeError, ValueError) as error:
            raise TlpError(f"config file {path}: {key}={value!r} is not a valid "
                           f"{inputs[name].type}.") from error
    return result


def _explicit_arguments(args: argparse.Namespace, inputs: dict) -> dict:
    """The parameters set by the config file or by flags (flags win)."""
    arguments = _read_config(args.config, inputs) if args.config else {}
    arguments.update({name: getattr(args, name) for name in inputs if hasattr(args, name)})
    return arguments


def _validator():
    """components.validation.validate_parameters, imported quietly."""
    import_tensorflow_quietly()
    from components.validation import validate_parameters

    return validate_parameters


def pipeline_arguments(args: argparse.Namespace, local: bool) -> dict:
    """Defaults < config file < flags; every parameter, validated, image_size 0 resolved to
    the backbone's native size."""
    validate_parameters = _validator()
    inputs = _pipeline_inputs()
    arguments = {name: spec.default for name, spec in inputs.items()}
    if local:
        arguments["data_dir"] = str(configs.SAMPLE_DATA_DIR)
    if getattr(args, "demo", False):
        from components import demo_weights

        arguments["weights"] = str(demo_weights.ensure_demo_weights())
        arguments["image_size"] = demo_weights.IMAGE_SIZE  # The size the weights were made at.
        arguments["fine_tune_epochs"] = configs.DEMO_FINE_TUNE_EPOCHS
    arguments.update(_explicit_arguments(args, inputs))
    return validate_parameters(arguments, local=local)


def tune_options(args: argparse.Namespace, arguments: dict, local: bool):
    """The tuning settings from the flags (None: no tuning), the search space checked
    against the parameters (a value the steps would reject fails here), the trial budget
    printed (with the step count when the data is a local folder or listing)."""
    import math

    from components import sources, tuning
    from pipelines.pipeline import TuneOptions

    if not args.tune_trials:
        if args.search_space:
            raise TlpError("--search-space needs --tune-trials N (N > 0) to tune.")
        return None
    source = str(args.search_space) if args.search_space else "(the default)"
    options = TuneOptions(args.tune_trials, args.tune_rounds, args.tune_parallelism,
                          tuning.load_space(args.search_space), source)
    dimensions = tuning.parse_space(options.space, source, tuning.tunable_types())
    validate_parameters = _validator()
    tuning.check_values(dimensions, arguments, lambda params: validate_parameters(
        params, local=False, require_data_dir=False), source)
    steps = None
    data_dir = arguments.get("data_dir") or ""
    if local and data_dir and sources.kind(data_dir) != "tfds" and "://" not in data_dir:
        images = len(sources.list_source(data_dir).entries)
        steps = math.ceil(images * arguments["train_ratio"] / arguments["batch_size"])
    rounds = tuning.plan(options.trials, options.rounds, arguments["epochs"],
                         arguments["fine_tune_epochs"])
    print(tuning.describe_budget(rounds, arguments["fine_tune_epochs"], steps), flush=True)
    return options


def write_tuned_config(result, arguments: dict) -> Path:
    """The best configuration as a config file in the run's folder: the parameters this run
    set away from the defaults, with the best trial's over them."""
    inputs = _pipeline_inputs()
    chosen = {name: value for name, value in arguments.items()
              if value != inputs[name].default}
    path = result.run_dir / configs.TUNED_CONFIG_FILE
    path.write_text(yaml.safe_dump({**chosen, **result.tuning["best"]["overrides"]},
                                   sort_keys=False))
    return path


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines import runner

    if not args.local:
        raise TlpError("tlp run needs --local (to run on a cluster, use tlp submit).")
    arguments = pipeline_arguments(args, local=True)
    tuning = tune_options(args, arguments, local=True)
    image = configs.image(configs.CPU_IMAGE_NAME, args.image_registry) if args.docker else None
    print(f"Running the pipeline locally{f' in {image}' if image else ''} on "
          f"{arguments['data_dir']} (backbone {arguments['backbone']}, weights "
          f"{arguments['weights']})", flush=True)
    started = time.monotonic()
    result = runner.run_local(arguments, args.pipeline_root, image, args.verbose,
                              tuning=tuning)
    accuracy = result.evaluation["accuracy"]
    print(f"\nPipeline finished in {time.monotonic() - started:.0f} s: {result.run_dir}")
    initial = result.evaluation["initial"]
    print(f"  test accuracy: {accuracy:.4f} (test loss {result.evaluation['loss']:.4f}); "
          f"before training {initial['accuracy']:.4f} (test loss {initial['loss']:.4f})")
    print(f"  report:        {result.report}")
    if result.exported_model:
        print(f"  model:         {result.exported_model}")
        print(f"  try it:        tlp predict {result.exported_model} IMAGE...")
    else:
        print(f"  model:         not exported: {result.evaluation['gate']['reason']}")
    if result.tuning:
        best = result.tuning["best"]
        print(f"  tuning:        best of {len(result.tuning['trials'])} trial runs: trial "
              f"{best['trial']}, val_accuracy {best['val_accuracy']:.4f}")
        if result.tuning["best_note"]:
            print(f"                 ({result.tuning['best_note']})")
        for name, value in best["overrides"].items():
            print(f"                   {name}: {value}")
        print(f"  reuse it:      tlp run --local --config {write_tuned_config(result, arguments)}"
              "  (no tuning)")
    return 0


def _key_values(pairs: list[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not (key and sep and value):
            raise TlpError(f"{flag} {pair!r}: write KEY=VALUE.")
        result[key] = value
    return result


def cluster_options(args: argparse.Namespace):
    """The cluster settings from the flags, over the defaults in components/configs.py;
    with train_nodes, the pipeline parameter's value set by flag or config (steps that
    launch TrainJobs need no GPU of their own)."""
    from pipelines.pipeline import ClusterOptions

    cpu = _key_values(args.cpu_request, "--cpu-request")
    memory = _key_values(args.memory_request, "--memory-request")
    resources = {step: (cpu.pop(step, default_cpu), memory.pop(step, default_memory))
                 for step, (default_cpu, default_memory) in configs.STEP_RESOURCES.items()}
    if cpu or memory:
        raise TlpError(f"--cpu-request/--memory-request for unknown step(s) "
                       f"{', '.join({**cpu, **memory})}; steps: "
                       f"{', '.join(configs.STEP_RESOURCES)}.")
    tolerations = None if args.gpu_toleration is None else tuple(
        t for t in args.gpu_toleration if t != "none")
    return ClusterOptions(
        target=args.target, gpu_count=args.gpu_count, gpu_resource=args.gpu_resource,
        gpu_type=args.gpu_type,
        gpu_node_selector=_key_values(args.gpu_node_selector, "--gpu-node-selector")
        or dict(configs.GPU_NODE_SELECTOR),
        gpu_tolerations=tolerations, resources=resources, retries=args.retries,
        cache_preprocess=args.cache_preprocess, image_pull_policy=args.image_pull_policy,
        image_pull_secrets=tuple(args.image_pull_secret or ()),
        image_registry=args.image_registry,
        preprocess_parallelism=args.preprocess_parallelism, s3_endpoint=args.s3_endpoint,
        s3_secret=args.s3_secret,
        train_nodes=_explicit_arguments(args, _pipeline_inputs()).get("train_nodes",
                                                                      configs.TRAIN_NODES))


def cmd_compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    from pipelines import vertex
    from pipelines.pipeline import create_pipeline

    validate_parameters = _validator()
    inputs = _pipeline_inputs()
    overrides = _explicit_arguments(args, inputs)
    arguments = validate_parameters({**{name: spec.default for name, spec in inputs.items()},
                                     **overrides}, local=False, require_data_dir=False)
    cluster = cluster_options(args)
    if cluster.vertex:
        vertex.check_arguments(arguments)
    tuning = tune_options(args, arguments, local=False)
    # The values set by flags or config become the compiled pipeline's defaults.
    compiler.Compiler().compile(create_pipeline(cluster, tuning=tuning),
                                str(args.output), pipeline_parameters=overrides or None)
    print(f"wrote {args.output}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines import runner, vertex

    cluster = cluster_options(args)
    if cluster.vertex and (args.host or args.namespace or not args.project):
        raise TlpError("--target vertex runs in a Google Cloud project: give --project (and "
                       "--region), not --host or --namespace.")
    if not cluster.vertex and not args.host:
        raise TlpError("--host is required: the KFP API endpoint, e.g. http://localhost:8080 "
                       "(or --target vertex).")
    arguments = pipeline_arguments(args, local=False)
    tuning = tune_options(args, arguments, local=False)
    if cluster.vertex:
        _, state = vertex.submit(arguments, cluster, vertex.VertexProject(
            args.project, args.region, args.service_account, args.api_endpoint),
            args.pipeline_root, args.run_name, args.wait, args.timeout, tuning)
    else:
        _, state = runner.submit(arguments, args.host, cluster, args.experiment,
                                 args.run_name, args.namespace, args.pipeline_root, args.wait,
                                 args.timeout, tuning)
    if state is not None:
        print(f"final state: {state}")
        return 0 if state == "SUCCEEDED" else 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import_tensorflow_quietly()
    from components import predict

    # With --url the first positional argument is an image too.
    model, images = (args.url, [args.model, *args.images]) if args.url else (args.model,
                                                                            args.images)
    if not images:
        raise TlpError("tlp predict needs MODEL and at least one IMAGE (or --url URL IMAGE...).")
    results = predict.predict_files(model, images, args.top_k)
    print(predict.format_table(results))
    if args.csv:
        predict.write_csv(results, args.csv)
        print(f"wrote {args.csv}")
    return 0


BACKBONE_COLUMNS = (("name", "name"), ("family", "family"), ("native px", "native_image_size"),
                    ("min px", "min_image_size"), ("params (M)", "parameters"),
                    ("preprocessing", "preprocessing"), ("fine-tune unit", "fine_tune_unit"),
                    ("weights", "weights"))


def format_backbones(rows: list[dict]) -> str:
    """The backbones as a plain-text table, parameters in millions ('-': not known)."""
    def cell(row: dict, key: str) -> str:
        if row[key] is None:
            return "-"
        return f"{row[key] / 1e6:.1f}" if key == "parameters" else str(row[key])

    cells = [[title for title, _ in BACKBONE_COLUMNS]] + [
        [cell(row, key) for _, key in BACKBONE_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(BACKBONE_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in cells)


def cmd_backbones(args: argparse.Namespace) -> int:
    import json

    from components.backbone_catalog import describe

    rows = [] if args.presets else describe()
    if args.hub or args.presets:  # Imports KerasHub (and TensorFlow): only when asked.
        from components import hub_backbones

        infos = ([hub_backbones.describe(name if hub_backbones.is_hub(name)
                                         else hub_backbones.PREFIX + name)
                  for name in args.presets] if args.presets
                 else hub_backbones.list_presets())
        rows += [hub_backbones.as_row(info) for info in infos]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_backbones(rows))
    print(f"\nimage_size 0 (the default) means the native size. Parameters: without the "
          f"top. {len(rows)} backbones.")
    if args.hub and not args.presets:
        print("KerasHub presets (backbone=hub:PRESET): native size '-' is in the preset "
              "(`tlp backbones hub:PRESET` reads it); parameters as KerasHub lists them, both "
              "towers for CLIP and SigLIP; hub: also takes kaggle:// and hf:// handles and "
              "preset folders (README: KerasHub backbones).")
    return 0


def cmd_demo_weights(args: argparse.Namespace) -> int:
    if args.model == "efficientnet-lite0":
        from components.lite0_weights import ensure_preset

        print(ensure_preset(args.cache_dir))
    else:
        from components.demo_weights import ensure_demo_weights

        print(ensure_demo_weights(args.cache_dir))
    return 0


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster settings (defaults in components/configs.py)")
    group.add_argument("--target", choices=configs.TARGETS, default=configs.TARGET,
                       help="where the pipeline runs: kfp, a Kubeflow cluster; vertex, Vertex "
                            "AI Pipelines (no Kubernetes settings, gs:// pipeline root and "
                            "export destination) [%(default)s]")
    group.add_argument("--gpu-count", type=int, default=configs.GPU_COUNT,
                       help="GPUs requested by train and fine_tune (0: none, and the CPU "
                            "image) [%(default)s]")
    group.add_argument("--gpu-resource",
                       help=f"kfp: Kubernetes resource name of the GPU [{configs.GPU_RESOURCE}]")
    group.add_argument("--gpu-type",
                       help="vertex: Vertex AI accelerator of the GPU steps, one of "
                            f"{', '.join(configs.VERTEX_GPU_TYPES)} "
                            f"[{configs.VERTEX_GPU_TYPE}]")
    group.add_argument("--gpu-node-selector", action="append", metavar="KEY=VALUE",
                       help="node label the GPU steps must run on; repeatable [none]")
    group.add_argument("--gpu-toleration", action="append", metavar="KEY[=VALUE][:EFFECT]",
                       help="taint the GPU steps tolerate; repeatable; `none` for none "
                            f"[{', '.join(configs.GPU_TOLERATIONS)}]")
    group.add_argument("--cpu-request", action="append", metavar="STEP=CPU",
                       help="CPU of a step (kfp: request, vertex: limit), e.g. train=8; "
                            f"repeatable [{_resource_defaults(0)}]")
    group.add_argument("--memory-request", action="append", metavar="STEP=MEMORY",
                       help="memory of a step (kfp: request, vertex: limit), e.g. "
                            f"train=32Gi; repeatable [{_resource_defaults(1)}]")
    group.add_argument("--retries", type=int, default=configs.RETRIES,
                       help="retries of a failed train or fine_tune, with back-off "
                            "[%(default)s]")
    group.add_argument("--preprocess-parallelism", type=int,
                       default=configs.PREPROCESS_PARALLELISM,
                       help="pods preprocess fans out over, each encoding a group of the "
                            "files, then merged; 1: one step [%(default)s]")
    group.add_argument("--cache-preprocess", action=argparse.BooleanOptionalAction,
                       default=True, help="reuse preprocess outputs for the same parameters "
                                          "(turn off when data_dir's content changed) "
                                          "[%(default)s]")
    group.add_argument("--image-registry", default=configs.IMAGE_REGISTRY,
                       help="registry the tlp-cpu/tlp-gpu images are pulled from "
                            "[%(default)s]")
    group.add_argument("--image-pull-policy", choices=("Always", "IfNotPresent", "Never"),
                       help=f"kfp [{configs.IMAGE_PULL_POLICY}]")
    group.add_argument("--image-pull-secret", action="append", metavar="NAME",
                       help="Secret with the registry's credentials; repeatable [none]")
    group.add_argument("--s3-endpoint", default="", metavar="URL",
                       help="URL of the S3-compatible store the steps read and write "
                            "(AWS_ENDPOINT_URL_S3), e.g. http://minio-service.kubeflow:9000; "
                            "needed for minio:// pipeline roots [AWS]")
    group.add_argument("--s3-secret", default="", metavar="NAME",
                       help="Secret whose AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY every "
                            "step gets, for s3:// and minio:// URIs [none]")


def _add_tune_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "tuning (fixed when the pipeline is built: they shape its DAG; README: Tuning)")
    group.add_argument("--tune-trials", type=int, default=configs.TUNE_TRIALS, metavar="N",
                       help="tune first: N trials (the run's own configuration and N-1 "
                            "drawn from the search space) in rounds of successive halving, "
                            "then train with the best; 0: no tuning [%(default)s]")
    group.add_argument("--tune-rounds", type=int, default=configs.TUNE_ROUNDS, metavar="R",
                       help="rounds; each keeps the best third of the trials and gives them "
                            "3x the share of the train split [%(default)s]")
    group.add_argument("--tune-parallelism", type=int, default=configs.TUNE_PARALLELISM,
                       metavar="P", help="trials running at once in a round [%(default)s]")
    group.add_argument("--search-space", type=Path, metavar="FILE",
                       help="YAML: PARAMETER: {log_uniform: [LOW, HIGH]} | {uniform: [LOW, "
                            "HIGH]} | {choice: [A, B]}, one per line [learning_rate, "
                            "fine_tune_layers, fine_tune_learning_rate, dropout, "
                            f"{configs.TUNE_AUGMENT_SCALE}]")


def _resource_defaults(index: int) -> str:
    return ", ".join(f"{step}={values[index]}" for step, values in configs.STEP_RESOURCES.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline locally with kfp.local")
    run.add_argument("--local", action="store_true", help="run every step as a local process")
    run.add_argument("--pipeline-root", default=configs.DEFAULT_PIPELINE_ROOT,
                     help="local folder for the run's artifacts [%(default)s]")
    run.add_argument("--docker", action="store_true",
                     help="run each step in a container of the CPU image (kfp.local "
                          "DockerRunner); needs a Docker engine and `make images`")
    run.add_argument("--verbose", action="store_true",
                     help="stream every step's whole output (kfp.local's too) rather than a "
                          "line per step and epoch; either way it is in <run>/"
                          f"{configs.LOGS_DIR}/<step>.log")
    run.add_argument("--image-registry", default=configs.IMAGE_REGISTRY,
                     help="with --docker: where the tlp-cpu image comes from [%(default)s]")
    run.add_argument("--demo", action="store_true",
                     help="use the offline demo weights (derived on first use, see "
                          "`tlp demo-weights`) at their 160 px, and "
                          f"{configs.DEMO_FINE_TUNE_EPOCHS} fine-tune epochs (flags and "
                          "--config still win); data defaults to the bundled sample anyway")
    _add_tune_flags(run)
    _add_parameter_flags(run)
    run.set_defaults(func=cmd_run)

    comp = commands.add_parser("compile", help="compile the pipeline to a YAML file")
    comp.add_argument("-o", "--output", type=Path, default=Path("pipeline.yaml"),
                      help="output file [%(default)s]")
    _add_cluster_flags(comp)
    _add_tune_flags(comp)
    _add_parameter_flags(comp)
    comp.set_defaults(func=cmd_compile)

    sub = commands.add_parser("submit", help="compile and start a run on a Kubeflow cluster "
                                             "or on Vertex AI Pipelines (--target vertex)")
    sub.add_argument("--host", help="kfp: KFP API endpoint, e.g. http://localhost:8080 "
                                    "[required]")
    sub.add_argument("--experiment", default="Default", help="kfp: experiment name [%(default)s]")
    sub.add_argument("--run-name", help="run name [pipeline name and time]")
    sub.add_argument("--namespace", help="kfp: Kubeflow profile namespace (multi-user installs)")
    sub.add_argument("--pipeline-root", help="artifact root, e.g. gs://bucket/root "
                                             "[kfp: the namespace's kfp-launcher default; "
                                             "vertex: required, gs://]")
    sub.add_argument("--project", help="vertex: Google Cloud project [required]")
    sub.add_argument("--region", default=configs.VERTEX_REGION,
                     help="vertex: region of the run [%(default)s]")
    sub.add_argument("--service-account", help="vertex: service account the steps run as "
                                               "[the project's Compute Engine default]")
    sub.add_argument("--api-endpoint", help="vertex: Vertex AI API endpoint "
                                            "[REGION-aiplatform.googleapis.com]")
    sub.add_argument("--wait", action="store_true",
                     help="follow the run; exit 1 unless it succeeds")
    sub.add_argument("--timeout", type=int, default=24 * 3600,
                     help="how long --wait waits, in seconds [%(default)s]")
    _add_cluster_flags(sub)
    _add_tune_flags(sub)
    _add_parameter_flags(sub)
    sub.set_defaults(func=cmd_submit)

    pred = commands.add_parser("predict", help="classify image files with an exported model")
    pred.add_argument("model", help="the export step's folder, a SavedModel folder (e.g. a "
                                    "published version), a .keras or a .tflite file")
    pred.add_argument("images", nargs="*",
                      help="image files (JPEG, PNG, GIF, BMP) or folders of them")
    pred.add_argument("--url", help="send the images to this TF Serving / KServe REST predict "
                                    "endpoint instead (no MODEL then), e.g. "
                                    "http://host:8501/v1/models/tlp:predict")
    pred.add_argument("--top-k", type=int, default=3,
                      help="classes to show per image [%(default)s]")
    pred.add_argument("--csv", type=Path, help="also write image,rank,class,probability rows")
    pred.set_defaults(func=cmd_predict)

    listing = commands.add_parser("backbones", help="list the backbones: family, native "
                                  "size, parameters, preprocessing, weights")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.add_argument("--hub", action="store_true", help="KerasHub's image presets too "
                         "(backbone=hub:PRESET; imports KerasHub)")
    listing.add_argument("presets", nargs="*", metavar="hub:PRESET",
                         help="describe these KerasHub presets only (a name, handle or "
                         "folder: reads, or downloads, the preset's config)")
    listing.set_defaults(func=cmd_backbones)

    weights = commands.add_parser("demo-weights", help="derive offline ImageNet weights and "
                                  "print their path: the demo's MobileNetV2 weights file, or "
                                  "an EfficientNet-Lite0 KerasHub preset folder (pass it as "
                                  "--backbone hub:FOLDER)")
    weights.add_argument("model", nargs="?", default="mobilenetv2",
                         choices=("mobilenetv2", "efficientnet-lite0"))
    weights.add_argument("--cache-dir", type=Path, help="where to keep them [~/.cache/tlp, "
                                                        "or $TLP_CACHE_DIR]")
    weights.set_defaults(func=cmd_demo_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TlpError as error:
        print(f"tlp: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
