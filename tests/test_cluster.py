"""The cluster settings of the compiled pipeline, parsed strictly into the KFP protos:
PipelineSpec (images, resources, caching, retries) and the kfp-kubernetes PlatformSpec
(node selector, tolerations, image pull policy and secrets, the object store's Secret)."""
import json

import pytest
import yaml
from google.protobuf import json_format
from kfp import compiler
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from components import configs
from components.errors import TlpError
from pipelines import cli
from pipelines.pipeline import ClusterOptions, create_pipeline

# Step -> its executor in the compiled spec; train and fine_tune are the GPU steps.
EXECUTORS = {"preprocess": "exec-preprocess", "train": "exec-train",
             "fine_tune": "exec-fine-tune", "evaluate": "exec-evaluate",
             "export": "exec-export", "register": "exec-register"}
GPU = ("train", "fine_tune")


# What the GPU steps get for a TrainJob (train_nodes > 1): their namespace and account.
TRAINJOB_FIELDS = [{"name": configs.NAMESPACE_ENV, "fieldPath": "metadata.namespace"},
                   {"name": configs.SERVICE_ACCOUNT_ENV, "fieldPath": "spec.serviceAccountName"}]


def step_env(container: dict) -> list[dict]:
    """The container's variables but the TrainJob node settings (checked on their own)."""
    return [dict(env) for env in (container["env"] if "env" in container else [])
            if env["name"] != configs.TRAINJOB_SETTINGS_ENV]


def trainjob_settings(container: dict) -> dict:
    [value] = [env["value"] for env in container["env"]
               if env["name"] == configs.TRAINJOB_SETTINGS_ENV]
    return json.loads(value)


def parse(path):
    """(PipelineSpec, {step: task spec}, {executor: KubernetesExecutorConfig}), all parsed
    strictly: an unknown or misspelt field fails the test."""
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    tasks = dict(spec.root.dag.tasks)
    while conditions := [n for n in tasks if n.startswith("condition")]:
        for name in conditions:
            tasks.update(spec.components[tasks.pop(name).component_ref.name].dag.tasks)
    tasks = {step: tasks[executor.removeprefix("exec-")] for step, executor in EXECUTORS.items()}
    kubernetes = {}
    if len(docs) > 1:
        platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
        executors = platform.platforms["kubernetes"].deployment_spec.executors
        kubernetes = {name: json_format.ParseDict(
            json_format.MessageToDict(config),
            kubernetes_executor_config_pb2.KubernetesExecutorConfig())
            for name, config in executors.items()}
    return spec, tasks, kubernetes


def compile_and_parse(tmp_path, cluster):
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(create_pipeline(cluster), str(path))
    return parse(path)


def test_every_cluster_setting_reaches_the_compiled_specs(tmp_path):
    options = ClusterOptions(
        gpu_count=2, gpu_resource="amd.com/gpu",
        gpu_node_selector={"cloud.google.com/gke-nodepool": "gpu-pool"},
        gpu_tolerations=("nvidia.com/gpu:NoSchedule", "pool=gpu:NoExecute", "dedicated"),
        resources={**configs.STEP_RESOURCES, "train": ("8", "32Gi"),
                   "preprocess": ("500m", "2Gi")},
        retries=3, image_pull_policy="Always", image_pull_secrets=("regcred", "mirror"),
        image_registry="registry.example.com:5000/ml/",
        s3_endpoint="http://minio-service.kubeflow:9000", s3_secret="tlp-object-store")
    spec, tasks, kubernetes = compile_and_parse(tmp_path, options)
    for step, executor in EXECUTORS.items():
        container = spec.deployment_spec["executors"][executor]["container"]
        resources = container["resources"]
        image = "tlp-gpu" if step in GPU else "tlp-cpu"
        assert container["image"] == f"registry.example.com:5000/ml/{image}:{configs.VERSION}"
        assert step_env(container) \
            == [{"name": "AWS_ENDPOINT_URL_S3", "value": "http://minio-service.kubeflow:9000"}] \
            + ([{"name": configs.REQUIRE_GPU_ENV, "value": "2"}] if step in GPU else [])
        assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) \
            == options.resources[step]
        if step in GPU:
            assert resources["accelerator"]["resourceType"] == "amd.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "2"
        else:
            assert "accelerator" not in resources
        task = tasks[step]
        assert task.caching_options.enable_cache == (step == "preprocess")
        if step in GPU:
            assert json_format.MessageToDict(task.retry_policy) == {
                "maxRetryCount": 3, "backoffDuration": configs.RETRY_BACKOFF,
                "backoffFactor": configs.RETRY_BACKOFF_FACTOR,
                "backoffMaxDuration": configs.RETRY_BACKOFF_MAX}
        else:
            assert not task.HasField("retry_policy")
    # Golden: the whole Kubernetes part of the compiled pipeline, executor by executor.
    pull = {"imagePullPolicy": "Always", "imagePullSecret": [
        {"secretName": name, "secretNameParameter": {"runtimeValue": {"constant": name}}}
        for name in ("regcred", "mirror")],
        "secretAsEnv": [{"secretName": "tlp-object-store", "optional": False,
                         "secretNameParameter": {"runtimeValue": {"constant": "tlp-object-store"}},
                         "keyToEnv": [{"secretKey": key, "envVar": key} for key in
                                      ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]}]}
    gpu = {**pull, "fieldPathAsEnv": TRAINJOB_FIELDS,
           "nodeSelector": {"labels": {"cloud.google.com/gke-nodepool": "gpu-pool"}},
           "tolerations": [
               {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
               {"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoExecute"},
               {"key": "dedicated", "operator": "Exists"}]}
    assert {name: json_format.MessageToDict(config) for name, config in kubernetes.items()} \
        == {executor: gpu if step in GPU else pull for step, executor in EXECUTORS.items()}


def test_defaults_come_from_configs(tmp_path):
    spec, tasks, kubernetes = compile_and_parse(tmp_path, ClusterOptions())
    train = spec.deployment_spec["executors"]["exec-train"]["container"]
    assert train["image"] == configs.GPU_IMAGE
    assert train["resources"]["accelerator"]["resourceType"] == configs.GPU_RESOURCE
    assert train["resources"]["accelerator"]["resourceCount"] == str(configs.GPU_COUNT)
    assert spec.deployment_spec["executors"]["exec-evaluate"]["container"]["image"] \
        == configs.CPU_IMAGE
    assert tasks["train"].retry_policy.max_retry_count == configs.RETRIES
    assert tasks["preprocess"].caching_options.enable_cache
    train_k8s = kubernetes["exec-train"]
    assert train_k8s.image_pull_policy == configs.IMAGE_PULL_POLICY
    assert not train_k8s.image_pull_secret and not train_k8s.node_selector.labels
    assert not train_k8s.secret_as_env
    # The GPU steps fail rather than train on the CPU if they find no GPU.
    assert step_env(train) \
        == [{"name": configs.REQUIRE_GPU_ENV, "value": str(configs.GPU_COUNT)}]
    assert "env" not in spec.deployment_spec["executors"]["exec-evaluate"]["container"]
    assert [(t.key, t.operator, t.effect) for t in train_k8s.tolerations] \
        == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert not kubernetes["exec-preprocess"].tolerations


def test_without_gpus_training_runs_in_the_cpu_image_on_any_node(tmp_path):
    spec, tasks, kubernetes = compile_and_parse(
        tmp_path, ClusterOptions(gpu_count=0, gpu_node_selector={"pool": "gpu"},
                                 cache_preprocess=False))
    for step in GPU:
        container = spec.deployment_spec["executors"][EXECUTORS[step]]["container"]
        assert "accelerator" not in container["resources"]
        assert container["image"] == configs.CPU_IMAGE
        assert not step_env(container)  # No GPU to require.
        config = kubernetes[EXECUTORS[step]]
        assert not config.node_selector.labels and not config.tolerations
        assert tasks[step].retry_policy.max_retry_count == configs.RETRIES
    assert not any(task.caching_options.enable_cache for task in tasks.values())


def test_the_local_pipeline_carries_no_cluster_settings(tmp_path):
    spec, tasks, kubernetes = compile_and_parse(tmp_path, None)
    assert kubernetes == {}
    assert "accelerator" not in str(spec.deployment_spec)
    assert not any(task.HasField("retry_policy") for task in tasks.values())


def test_compile_flags_set_the_cluster_settings(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert cli.main([
        "compile", "-o", str(out), "--gpu-count", "4", "--gpu-node-selector", "pool=a100",
        "--gpu-node-selector", "zone=b", "--gpu-toleration", "pool=a100:NoSchedule",
        "--cpu-request", "train=16", "--memory-request", "fine_tune=64Gi",
        "--memory-request", "evaluate=12Gi", "--retries", "0", "--no-cache-preprocess",
        "--image-registry", "eu.gcr.io/acme", "--image-pull-policy", "Always",
        "--image-pull-secret", "gcr", "--s3-endpoint", "https://s3.example.com",
        "--s3-secret", "store", "--epochs", "3"]) == 0
    spec, tasks, kubernetes = parse(out)
    executors = spec.deployment_spec["executors"]
    train, tune = (executors[EXECUTORS[s]]["container"] for s in GPU)
    assert train["image"] == f"eu.gcr.io/acme/tlp-gpu:{configs.VERSION}"
    assert train["resources"]["resourceCpuRequest"] == "16"
    assert train["resources"]["resourceMemoryRequest"] == configs.STEP_RESOURCES["train"][1]
    assert tune["resources"]["resourceMemoryRequest"] == "64Gi"
    assert tune["resources"]["accelerator"]["resourceCount"] == "4"
    assert executors["exec-evaluate"]["container"]["resources"]["resourceMemoryRequest"] \
        == "12Gi"
    assert not any(t.HasField("retry_policy") or t.caching_options.enable_cache
                   for t in tasks.values())
    config = kubernetes["exec-fine-tune"]
    assert dict(config.node_selector.labels) == {"pool": "a100", "zone": "b"}
    assert [(t.key, t.operator, t.value, t.effect) for t in config.tolerations] \
        == [("pool", "Equal", "a100", "NoSchedule")]
    assert config.image_pull_policy == "Always"
    assert [s.secret_name for s in kubernetes["exec-export"].image_pull_secret] == ["gcr"]
    assert [s.secret_name for s in kubernetes["exec-preprocess"].secret_as_env] == ["store"]
    assert [dict(env) for env in executors["exec-export"]["container"]["env"]] \
        == [{"name": "AWS_ENDPOINT_URL_S3", "value": "https://s3.example.com"}]
    assert spec.root.input_definitions.parameters["epochs"].default_value.number_value == 3


def test_no_toleration_when_asked(tmp_path):
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), "--gpu-toleration", "none"]) == 0
    assert not parse(out)[2]["exec-train"].tolerations


@pytest.mark.parametrize("argv, message", [
    (["--gpu-toleration", "nvidia.com/gpu:NoScheduling"],
     "toleration 'nvidia.com/gpu:NoScheduling': write KEY[=VALUE][:EFFECT]"),
    (["--gpu-node-selector", "pool"], "--gpu-node-selector 'pool': write KEY=VALUE"),
    (["--cpu-request", "training=4"], "--cpu-request/--memory-request for unknown step(s) "
                                      "training"),
    (["--memory-request", "train=16GB"], "train: CPU '4' / memory '16GB' are not Kubernetes "
                                         "quantities"),
    (["--retries", "-1"], "gpu count and retries must be 0 or more"),
    (["--s3-endpoint", "minio-service.kubeflow:9000"],
     "S3 endpoint 'minio-service.kubeflow:9000': write the store's URL"),
    (["--train-nodes", "2"], "train_nodes=2 needs backend=jax"),
    (["--train-nodes", "0"], "train_nodes=0 must be 1 or more"),
    (["--train-nodes", "2", "--backend", "jax", "--target", "vertex"],
     "train_nodes=2: several nodes run as a Kubeflow Trainer TrainJob, which Vertex AI "
     "Pipelines has no place for"),
])
def test_bad_cluster_flags_stop_with_one_message(tmp_path, capsys, argv, message):
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_preprocess_fans_out_over_pods_then_merges(tmp_path):
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), "--preprocess-parallelism", "3",
                     "--cpu-request", "preprocess=6"]) == 0
    spec = json_format.ParseDict(next(yaml.safe_load_all(out.read_text())),
                                 pipeline_spec_pb2.PipelineSpec())
    tasks = spec.root.dag.tasks
    assert "preprocess" not in tasks
    [loop] = [t for name, t in tasks.items() if name.startswith("for-loop")]
    assert loop.dependent_tasks == ["preprocess-list"]
    assert json_format.MessageToDict(loop.parameter_iterator)["items"]["raw"] == "[0, 1, 2]"
    assert loop.iterator_policy.parallelism_limit == 3
    group = spec.components[loop.component_ref.name].dag.tasks["preprocess-group"]
    assert group.inputs.parameters["groups"].runtime_value.constant.number_value == 3
    merge = tasks["preprocess-merge"]
    assert loop.task_info.name in merge.dependent_tasks
    for step in ("train", "fine-tune", "evaluate"):
        dataset = tasks[step].inputs.artifacts["dataset"].task_output_artifact
        assert (dataset.producer_task, dataset.output_artifact_key) == (
            "preprocess-merge", "dataset")
    assert tasks["preprocess-list"].caching_options.enable_cache
    assert group.caching_options.enable_cache and merge.caching_options.enable_cache
    for step in ("list", "group", "merge"):
        container = spec.deployment_spec["executors"][f"exec-preprocess-{step}"]["container"]
        assert container["resources"]["resourceCpuRequest"] == "6"
    with pytest.raises(TlpError, match="preprocess parallelism 0"):
        ClusterOptions(preprocess_parallelism=0)


def test_train_nodes_compile_to_launchers_and_gpu_settings_for_the_nodes(tmp_path):
    """Golden: --train-nodes 4 is the parameter's default, train and fine_tune launch
    TrainJobs (CPU image, small requests, no GPU, any node), and the GPU settings go to the
    TrainJob's nodes."""
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), "--train-nodes", "4", "--backend", "jax",
                     "--gpu-count", "8", "--gpu-node-selector", "tlp/pool=h100",
                     "--gpu-toleration", "nvidia.com/gpu:NoSchedule", "--cpu-request",
                     "train=32", "--memory-request", "train=256Gi", "--image-registry",
                     "registry.example.com/ml", "--s3-endpoint", "http://minio:9000"]) == 0
    spec, tasks, kubernetes = parse(out)
    parameter = spec.root.input_definitions.parameters["train_nodes"]
    assert parameter.default_value.number_value == 4
    assert spec.root.input_definitions.parameters["backend"].default_value.string_value == "jax"
    for step in GPU:
        inputs = tasks[step].inputs.parameters
        assert inputs["train_nodes"].component_input_parameter == "train_nodes"
        assert inputs["run_id"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"
        assert inputs["task_name"].runtime_value.constant.string_value \
            == "{{$.pipeline_task_name}}"
        assert tasks[step].retry_policy.max_retry_count == configs.RETRIES
        container = spec.deployment_spec["executors"][EXECUTORS[step]]["container"]
        assert container["image"] == f"registry.example.com/ml/tlp-cpu:{configs.VERSION}"
        assert "accelerator" not in container["resources"]
        assert (container["resources"]["resourceCpuRequest"],
                container["resources"]["resourceMemoryRequest"]) \
            == configs.TRAINJOB_LAUNCHER_RESOURCES
        assert step_env(container) == [{"name": "AWS_ENDPOINT_URL_S3",
                                        "value": "http://minio:9000"}]
        config = json_format.MessageToDict(kubernetes[EXECUTORS[step]])
        assert "nodeSelector" not in config and "tolerations" not in config
        assert config["fieldPathAsEnv"] == TRAINJOB_FIELDS
        resources = ("32", "256Gi") if step == "train" else configs.STEP_RESOURCES[step]
        assert trainjob_settings(container) == {
            "image": f"registry.example.com/ml/tlp-gpu:{configs.VERSION}", "gpu_count": 8,
            "gpu_resource": "nvidia.com/gpu", "cpu": resources[0], "memory": resources[1],
            "node_selector": {"tlp/pool": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                             "effect": "NoSchedule"}],
            "env": [{"name": "AWS_ENDPOINT_URL_S3", "value": "http://minio:9000"},
                    {"name": configs.REQUIRE_GPU_ENV, "value": "8"}],
            "image_pull_secrets": [], "launcher": True}


def test_one_node_steps_carry_node_settings_for_a_run_that_asks_for_more(tmp_path):
    """Compiled with one node, the GPU steps train themselves, and a run with train_nodes > 1
    still finds its TrainJob's settings."""
    spec, _, _ = compile_and_parse(tmp_path, ClusterOptions())
    container = spec.deployment_spec["executors"]["exec-train"]["container"]
    assert container["image"] == configs.GPU_IMAGE
    settings = trainjob_settings(container)
    assert settings["image"] == configs.GPU_IMAGE and not settings["launcher"]


def test_tuning_compiles_to_rounds_of_parallel_gpu_trials(tmp_path, capsys):
    """Golden: 8 trials, 2 rounds, 4 at a time, 2 GPUs: sample -> ParallelFor(trials) ->
    select -> ParallelFor(survivors) -> best -> train and fine_tune with the best."""
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), "--tune-trials", "8", "--tune-parallelism",
                     "4", "--gpu-count", "2", "--retries", "3"]) == 0
    assert ("round 2: 3 trial(s) x (10 head + 2 fine-tune epochs) on 33% of the train split"
            in capsys.readouterr().out)
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    tasks = spec.root.dag.tasks
    loops = sorted(name for name in tasks if name.startswith("for-loop"))
    assert loops == ["for-loop-1", "for-loop-2"]
    assert {name: (sorted(tasks[name].dependent_tasks),
                   tasks[name].iterator_policy.parallelism_limit,
                   tasks[name].parameter_iterator.items.input_parameter)
            for name in loops} == {
        "for-loop-1": (["preprocess", "tune-sample"], 4, "pipelinechannel--tune-sample-Output"),
        "for-loop-2": (["preprocess", "tune-select"], 4, "pipelinechannel--tune-select-Output")}
    assert set(tasks["tune-select"].dependent_tasks) == {"for-loop-1", "tune-sample"}
    assert set(tasks["tune-best"].dependent_tasks) == {"for-loop-2", "tune-select"}
    for step in ("train", "fine-tune"):
        tuned = tasks[step].inputs.parameters["tuned"].task_output_parameter
        assert (tuned.producer_task, tuned.output_parameter_key) == ("tune-best", "Output")
    assert tasks["evaluate"].inputs.artifacts["tuning"].task_output_artifact.producer_task \
        == "tune-best"
    space = tasks["tune-sample"].inputs.parameters["search_space"].runtime_value.constant
    assert json.loads(space.string_value) == configs.TUNE_SEARCH_SPACE
    executors = spec.deployment_spec["executors"]
    for index, executor in enumerate(("exec-tune-trial", "exec-tune-trial-2")):
        container = executors[executor]["container"]
        assert container["image"] == configs.GPU_IMAGE
        accelerator = container["resources"]["accelerator"]
        assert (accelerator["resourceType"], accelerator["resourceCount"]) \
            == (configs.GPU_RESOURCE, "2")
        assert (container["resources"]["resourceCpuRequest"],
                container["resources"]["resourceMemoryRequest"]) \
            == configs.STEP_RESOURCES["tune_trial"]
        loop = spec.components[tasks[loops[index]].component_ref.name].dag.tasks
        trial = loop[executor.removeprefix("exec-")]
        assert trial.retry_policy.max_retry_count == 3
        assert not trial.caching_options.enable_cache
    for executor in ("exec-tune-sample", "exec-tune-select", "exec-tune-best"):
        assert executors[executor]["container"]["image"] == configs.CPU_IMAGE
        assert "accelerator" not in executors[executor]["container"]["resources"]
    platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    trial_k8s = platform.platforms["kubernetes"].deployment_spec.executors["exec-tune-trial"]
    assert json_format.MessageToDict(trial_k8s)["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_tune_trials_0_compiles_to_the_pipeline_without_tuning(tmp_path):
    from pipelines.pipeline import TuneOptions

    plain, off = tmp_path / "plain.yaml", tmp_path / "off.yaml"
    compiler.Compiler().compile(create_pipeline(ClusterOptions()), str(plain))
    compiler.Compiler().compile(create_pipeline(ClusterOptions(),
                                                tuning=TuneOptions(trials=0)), str(off))
    assert off.read_text() == plain.read_text()
    assert "tune-sample" not in plain.read_text() and "for-loop" not in plain.read_text()


def test_tuning_compiles_for_vertex_too(tmp_path):
    """On Vertex AI Pipelines the trials get the Vertex accelerator and machine limits."""
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), "--target", "vertex", "--tune-trials", "4",
                     "--gpu-count", "1"]) == 0
    spec = json_format.ParseDict(next(yaml.safe_load_all(out.read_text())),
                                 pipeline_spec_pb2.PipelineSpec())
    container = spec.deployment_spec["executors"]["exec-tune-trial"]["container"]
    assert container["resources"]["accelerator"]["resourceType"] == configs.VERTEX_GPU_TYPE
    assert (container["resources"]["resourceCpuLimit"],
            container["resources"]["resourceMemoryLimit"]) \
        == configs.STEP_RESOURCES["tune_trial"]


def test_tuning_trials_stay_one_gpu_pod_when_training_runs_on_nodes(tmp_path):
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), "--train-nodes", "4", "--backend", "jax",
                     "--tune-trials", "2"]) == 0
    executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
    trial, train = (executors[name]["container"] for name in ("exec-tune-trial", "exec-train"))
    assert trial["image"] == configs.GPU_IMAGE and "accelerator" in trial["resources"]
    assert [env["name"] for env in trial["env"]] == [configs.REQUIRE_GPU_ENV]
    assert train["image"] == configs.CPU_IMAGE and "accelerator" not in train["resources"]
