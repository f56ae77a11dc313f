"""The pipeline: preprocess -> train -> fine_tune -> evaluate -> export (if accurate enough)
-> register (if a model registry is given); with tuning, rounds of trials between preprocess
and train."""
import json
import re
from dataclasses import dataclass, field

from kfp import dsl, kubernetes
from kfp.dsl import pipeline_channel

from components import configs, kfp_steps, trainjob
from components.tuning import parse_space, tunable_types
from components.errors import TlpError

GPU_STEPS = ("train", "fine_tune", "tune_trial")
# The GPU steps that run as a TrainJob of train_nodes nodes (tuning trials stay one pod).
TRAINJOB_STEPS = ("train", "fine_tune")
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Kubernetes quantities, as kfp checks them (CPU: "2", "0.5", "500m"; memory: "16Gi").
_CPU = re.compile(r"([0-9]*[.])?[0-9]+m?")
_MEMORY = re.compile(r"[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?")


def parse_toleration(text: str) -> dict:
    """kubectl-taint syntax, KEY[=VALUE][:EFFECT], as kfp.kubernetes.add_toleration arguments:
    without a value the toleration matches any (Exists), without an effect every effect."""
    match = re.fullmatch(r"([^=:]+)(?:=([^:]*))?(?::(\w+))?", text)
    if not match or (match[3] and match[3] not in TAINT_EFFECTS):
        raise TlpError(f"toleration {text!r}: write KEY[=VALUE][:EFFECT], EFFECT one of "
                       f"{', '.join(TAINT_EFFECTS)} (e.g. nvidia.com/gpu:NoSchedule).")
    key, value, effect = match.groups()
    return dict(key=key, operator="Exists" if value is None else "Equal", value=value,
                effect=effect)


# Settings of the kfp target only, by their tlp flags: Vertex AI Pipelines ignores
# kfp-kubernetes settings (and a volume mount breaks job creation, kubeflow/pipelines#11241).
CLUSTER_ONLY = {"gpu_resource": "--gpu-resource (on Vertex: --gpu-type)",
                "gpu_node_selector": "--gpu-node-selector",
                "gpu_tolerations": "--gpu-toleration",
                "image_pull_policy": "--image-pull-policy",
                "image_pull_secrets": "--image-pull-secret",
                "s3_endpoint": "--s3-endpoint", "s3_secret": "--s3-secret"}


@dataclass(frozen=True)
class ClusterOptions:
    """How the compiled pipeline runs on its target, a Kubeflow cluster (kfp) or Vertex AI
    Pipelines (vertex); kfp.local ignores all of it.

    gpu_count GPUs go to train and fine_tune, which then run in the GPU image: on kfp of
    gpu_resource, on nodes with the gpu_node_selector labels, tolerating gpu_tolerations
    (KEY[=VALUE][:EFFECT]); on vertex of the Vertex accelerator gpu_type. With gpu_count 0 they
    run in the CPU image anywhere. With GPUs, train and fine_tune also get
    configs.REQUIRE_GPU_ENV (the GPU count): they fail if their backend finds no GPU.
    resources: step -> (CPU, memory): requests on kfp; limits on vertex, which picks each
    step's machine by them. retries: attempts after a failure of train or fine_tune. Only
    preprocess is ever cached (cache_preprocess); the other steps always run. Images come
    from image_registry. preprocess_parallelism: 1 runs preprocess as one step; N > 1 fans it
    out over N pods (see add_preprocess), each with preprocess's resources. s3_endpoint and
    s3_secret give every step what components/storage.py needs for s3:// and minio:// URIs
    (training state under the pipeline root included): the store's URL as
    AWS_ENDPOINT_URL_S3, and the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY of that
    Secret as variables of the same names. None, "" or empty: the target's default (for
    vertex, none of the CLUSTER_ONLY settings may be given). train_nodes: the pipeline
    parameter's value when compiled (kfp only); N > 1 makes train and fine_tune launchers of
    N-node TrainJobs (components/trainjob.py), whose nodes get the GPUs, resources, node
    selector and tolerations above (node_settings) while the steps run in the CPU image with
    configs.TRAINJOB_LAUNCHER_RESOURCES.
    """
    target: str = configs.TARGET
    gpu_count: int = configs.GPU_COUNT
    gpu_resource: str | None = None  # kfp: configs.GPU_RESOURCE.
    gpu_type: str | None = None  # vertex: configs.VERTEX_GPU_TYPE.
    gpu_node_selector: dict[str, str] = field(
        default_factory=lambda: dict(configs.GPU_NODE_SELECTOR))
    gpu_tolerations: tuple[str, ...] | None = None  # kfp: configs.GPU_TOLERATIONS.
    resources: dict[str, tuple[str, str]] = field(
        default_factory=lambda: dict(configs.STEP_RESOURCES))
    retries: int = configs.RETRIES
    cache_preprocess: bool = True
    image_pull_policy: str | None = None  # kfp: configs.IMAGE_PULL_POLICY.
    image_pull_secrets: tuple[str, ...] = ()
    image_registry: str = configs.IMAGE_REGISTRY
    preprocess_parallelism: int = configs.PREPROCESS_PARALLELISM
    s3_endpoint: str = ""
    s3_secret: str = ""
    train_nodes: int = configs.TRAIN_NODES

    def __post_init__(self):
        if self.target not in configs.TARGETS:
            raise TlpError(f"target {self.target!r}: choose {' or '.join(configs.TARGETS)}.")
        if self.vertex:
            self._check_vertex()
        elif self.gpu_type:
            raise TlpError(f"gpu type {self.gpu_type!r} is a Vertex AI accelerator name, for "
                           "--target vertex; on a Kubeflow cluster name the GPU's Kubernetes "
                           f"resource (--gpu-resource, default {configs.GPU_RESOURCE}).")
        for text in self.tolerations:
            parse_toleration(text)
        if self.gpu_count < 0 or self.retries < 0:
            raise TlpError("gpu count and retries must be 0 or more.")
        if self.train_nodes < 1:
            raise TlpError(f"train_nodes={self.train_nodes} must be 1 (train in the step) or "
                           "more (a TrainJob of that many nodes).")
        if self.preprocess_parallelism < 1:
            raise TlpError(f"preprocess parallelism {self.preprocess_parallelism} must be 1 "
                           "(one step) or more (pods).")
        if self.s3_endpoint and not re.fullmatch(r"https?://[^/\s]+/?", self.s3_endpoint):
            raise TlpError(f"S3 endpoint {self.s3_endpoint!r}: write the store's URL, e.g. "
                           "http://minio-service.kubeflow:9000.")
        if self.pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise TlpError(f"image pull policy {self.pull_policy!r}: choose Always, "
                           "IfNotPresent or Never.")
        for step, (cpu, memory) in self.resources.items():
            if step not in configs.STEP_RESOURCES:
                raise TlpError(f"resources for unknown step {step!r}; steps: "
                               f"{', '.join(configs.STEP_RESOURCES)}.")
            if not _CPU.fullmatch(cpu) or not _MEMORY.fullmatch(memory):
                raise TlpError(f"{step}: CPU {cpu!r} / memory {memory!r} are not Kubernetes "
                               "quantities (e.g. CPU 4 or 500m, memory 16Gi).")

    def _check_vertex(self) -> None:
        given = [flag for name, flag in CLUSTER_ONLY.items() if getattr(self, name)]
        if given:
            raise TlpError(f"{', '.join(given)}: Kubeflow cluster settings, which Vertex AI "
                           "Pipelines ignores; leave them out with --target vertex.")
        if self.train_nodes > 1:
            raise TlpError(f"train_nodes={self.train_nodes}: several nodes run as a Kubeflow "
                           "Trainer TrainJob, which Vertex AI Pipelines has no place for; use "
                           "--train-nodes 1 with --target vertex.")
        if self.accelerator not in configs.VERTEX_GPU_TYPES:
            raise TlpError(f"gpu type {self.accelerator!r} is not a Vertex AI GPU; choose "
                           f"one of {', '.join(configs.VERTEX_GPU_TYPES)}.")

    @property
    def vertex(self) -> bool:
        return self.target == "vertex"

    @property
    def accelerator(self) -> str:
        """The GPU steps' accelerator type: Vertex's name of the GPU on vertex, the
        Kubernetes resource name on kfp."""
        if self.vertex:
            return self.gpu_type or configs.VERTEX_GPU_TYPE
        return self.gpu_resource or configs.GPU_RESOURCE

    @property
    def tolerations(self) -> tuple[str, ...]:
        if self.vertex:
            return ()
        return configs.GPU_TOLERATIONS if self.gpu_tolerations is None else self.gpu_tolerations

    @property
    def pull_policy(self) -> str:
        return self.image_pull_policy or configs.IMAGE_PULL_POLICY

    def _env(self) -> list[dict]:
        """Every step's variables for the object store, as Kubernetes EnvVar objects."""
        env = [{"name": "AWS_ENDPOINT_URL_S3", "value": self.s3_endpoint}] \
            if self.s3_endpoint else []
        return env + [{"name": key, "valueFrom": {"secretKeyRef": {
            "name": self.s3_secret, "key": key}}} for key in S3_SECRET_KEYS if self.s3_secret]

    def node_settings(self, step: str) -> "trainjob.NodeSettings":
        """How each node of a TrainJob of the GPU step `step` runs: as the step would, with
        its image, GPUs, requests, node selector, tolerations and object-store variables."""
        gpu = self.gpu_count > 0
        env = self._env() + ([{"name": configs.REQUIRE_GPU_ENV, "value": str(self.gpu_count)}]
                             if gpu else [])
        cpu, memory = self.resources.get(step, configs.STEP_RESOURCES[step])
        return trainjob.NodeSettings(
            image=configs.image(configs.GPU_IMAGE_NAME if gpu else configs.CPU_IMAGE_NAME,
                                self.image_registry),
            gpu_count=self.gpu_count, gpu_resource=self.accelerator, cpu=cpu, memory=memory,
            node_selector=dict(self.gpu_node_selector) if gpu else {},
            tolerations=[{key: value for key, value in parse_toleration(text).items()
                          if value is not None} for text in self.tolerations] if gpu else [],
            env=env, image_pull_secrets=list(self.image_pull_secrets),
            launcher=self.train_nodes > 1)

    def configure(self, task: dsl.PipelineTask, step: str) -> None:
        """Applies these options to the task of the given step. On kfp the GPU steps also
        get what they need to run a TrainJob (train_nodes > 1): its node settings, their
        namespace and service account; compiled with train_nodes > 1 they only launch it, so
        run in the CPU image, on any node, with small requests."""
        launcher = step in TRAINJOB_STEPS and self.train_nodes > 1
        gpu = step in GPU_STEPS and self.gpu_count > 0 and not launcher
        name = configs.GPU_IMAGE_NAME if gpu else configs.CPU_IMAGE_NAME
        task.set_container_image(configs.image(name, self.image_registry))
        if self.s3_endpoint:
            task.set_env_variable("AWS_ENDPOINT_URL_S3", self.s3_endpoint)
        cpu, memory = (configs.TRAINJOB_LAUNCHER_RESOURCES if launcher
                       else self.resources.get(step, configs.STEP_RESOURCES[step]))
        if self.vertex:  # Vertex sizes each step's machine by its limits.
            task.set_cpu_limit(cpu).set_memory_limit(memory)
        else:
            task.set_cpu_request(cpu).set_memory_request(memory)
        # A cache hit is keyed on the parameters only: right for the preprocessed data of one
        # data_dir, wrong for training (re-running it is the point) and for export.
        task.set_caching_options(step == "preprocess" and self.cache_preprocess)
        if step in GPU_STEPS and self.retries:
            task.set_retry(self.retries, backoff_duration=configs.RETRY_BACKOFF,
                           backoff_factor=configs.RETRY_BACKOFF_FACTOR,
                           backoff_max_duration=configs.RETRY_BACKOFF_MAX)
        if gpu:
            task.set_accelerator_type(self.accelerator).set_accelerator_limit(self.gpu_count)
            # The step fails rather than train on the CPU if its backend finds no GPU.
            task.set_env_variable(configs.REQUIRE_GPU_ENV, str(self.gpu_count))
        if not self.vertex:
            self._configure_kubernetes(task, step, gpu)

    def _configure_kubernetes(self, task: dsl.PipelineTask, step: str, gpu: bool) -> None:
        """The kfp-kubernetes settings: the compiled pipeline's platform spec."""
        if step in TRAINJOB_STEPS:
            task.set_env_variable(configs.TRAINJOB_SETTINGS_ENV,
                                  self.node_settings(step).to_json())
            kubernetes.use_field_path_as_env(task, configs.NAMESPACE_ENV, "metadata.namespace")
            kubernetes.use_field_path_as_env(task, configs.SERVICE_ACCOUNT_ENV,
                                             "spec.serviceAccountName")
        kubernetes.set_image_pull_policy(task, self.pull_policy)
        if self.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(self.image_pull_secrets))
        if self.s3_secret:
            kubernetes.use_secret_as_env(task, self.s3_secret, {
                key: key for key in S3_SECRET_KEYS})
        if gpu:
            for key, value in self.gpu_node_selector.items():
                kubernetes.add_node_selector(task, key, value)
            for text in self.tolerations:
                kubernetes.add_toleration(task, **parse_toleration(text))


def _arguments(component, params: dict) -> dict:
    """The params that are inputs of the component."""
    return {name: value for name, value in params.items()
            if name in component.component_spec.inputs}


def add_preprocess(groups: int, params: dict) -> tuple[dsl.PipelineTask,
                                                       list[dsl.PipelineTask]]:
    """The preprocess tasks: one step, or for groups > 1 a fan-out: list the input files,
    encode each group of them in its own pod (dsl.ParallelFor), merge the parts into the
    dataset. Either way the same dataset; returns the task with the `dataset`, `manifest` and
    `summary` outputs, and every task (to configure). params: the preprocess parameters."""
    if groups == 1:
        task = kfp_steps.preprocess(**params)
        return task, [task]
    listing = kfp_steps.preprocess_list(**_arguments(kfp_steps.preprocess_list, params))
    with dsl.ParallelFor(list(range(groups)), parallelism=groups) as group:
        part = kfp_steps.preprocess_group(
            listing=listing.outputs["listing"], group=group, groups=groups,
            **_arguments(kfp_steps.preprocess_group, params))
    merge = kfp_steps.preprocess_merge(parts=dsl.Collected(part.outputs["part"]),
                                       **_arguments(kfp_steps.preprocess_merge, params))
    return merge, [listing, part, merge]


@dataclass(frozen=True)
class TuneOptions:
    """Tuning inside the pipeline (components/tuning.py), fixed when the pipeline is built:
    the rounds and their parallelism shape the DAG. trials 0: no tuning, the pipeline as
    without it. space: the search space, as parsed YAML (checked by tuning.parse_space and
    compiled into the pipeline as the sample step's search_space parameter)."""
    trials: int = configs.TUNE_TRIALS
    rounds: int = configs.TUNE_ROUNDS
    parallelism: int = configs.TUNE_PARALLELISM
    space: dict = field(default_factory=lambda: dict(configs.TUNE_SEARCH_SPACE))
    source: str = "(the default)"  # Where the space came from, for messages: its file.

    def __post_init__(self):
        if self.trials < 0 or self.trials == 1 or self.rounds < 1 or self.parallelism < 1:
            raise TlpError(f"tune trials {self.trials}, rounds {self.rounds}, parallelism "
                           f"{self.parallelism}: trials must be 0 (off) or 2 or more (trial 0 "
                           "is the pipeline's own configuration), rounds and parallelism 1 "
                           "or more.")
        if self.trials:
            parse_space(self.space, self.source, tunable_types())


def add_tuning(tune: TuneOptions, dataset: pipeline_channel.PipelineChannel, params: dict
               ) -> tuple[pipeline_channel.PipelineChannel, pipeline_channel.PipelineChannel,
                          list[tuple[str, dsl.PipelineTask]]]:
    """The tuning tasks: sample, then per round a ParallelFor of trials and a select that
    keeps the best (successive halving; tune_best after the last round). Returns the best
    trial's parameters, the trials table artifact and the (step, task) pairs."""
    sample = kfp_steps.tune_sample(dataset=dataset, search_space=json.dumps(tune.space),
                                   searchable=tunable_types(),
                                   trials=tune.trials, rounds=tune.rounds,
                                   **_arguments(kfp_steps.tune_sample, params))
    tasks = [("tune_sample", sample)]
    items, table = sample.outputs["Output"], sample.outputs["table"]
    for index in range(tune.rounds):
        with dsl.ParallelFor(items, parallelism=tune.parallelism) as item:
            trial = kfp_steps.tune_trial(dataset=dataset, trial=item,
                                         **_arguments(kfp_steps.tune_trial, params))
        last = index == tune.rounds - 1
        select = (kfp_steps.tune_best if last else kfp_steps.tune_select)(
            results=dsl.Collected(trial.outputs["result"]), table=table)
        tasks += [("tune_trial", trial), ("tune_select", select)]
        items, table = select.outputs["Output"], select.outputs["tuning"]
    return items, table, tasks


def create_pipeline(cluster: ClusterOptions | None = None, image: str | None = None,
                    tuning: TuneOptions | None = None):
    """Returns the pipeline; with cluster options for a cluster, without for kfp.local (with
    image, every step runs in that image: kfp.local's DockerRunner); with tune options of 1
    trial or more, tuning before train (add_tuning)."""
    tunes = tuning is not None and tuning.trials > 0

    @dsl.pipeline(name=configs.PIPELINE_NAME,
                  description="Transfer-learning image classifier: preprocess, train a new head "
                              "on a pretrained backbone, fine-tune, evaluate, export.")
    def pipeline(
        data_dir: str,
        backbone: str = configs.BACKBONE,
        weights: str = configs.WEIGHTS,
        image_size: int = configs.IMAGE_SIZE,
        train_ratio: float = configs.TRAIN_RATIO,
        validation_ratio: float = configs.VALIDATION_RATIO,
        test_ratio: float = configs.TEST_RATIO,
        seed: int = configs.SEED,
        resize_mode: str = configs.RESIZE_MODE,
        image_format: str = configs.IMAGE_FORMAT,
        num_workers: int = configs.NUM_WORKERS,
        shard_size_mb: int = configs.SHARD_SIZE_MB,
        min_images_per_class: int = configs.MIN_IMAGES_PER_CLASS,
        max_rejected_fraction: float = configs.MAX_REJECTED_FRACTION,
        max_image_pixels: int = configs.MAX_IMAGE_PIXELS,
        near_duplicate_distance: int = configs.NEAR_DUPLICATE_DISTANCE,
        previous_manifest: str = configs.PREVIOUS_MANIFEST,
        tfds_data_dir: str = configs.TFDS_DATA_DIR,
        tfds_splits: str = configs.TFDS_SPLITS,
        batch_size: int = configs.BATCH_SIZE,
        pooling: str = configs.POOLING,
        head_dense_units: str = configs.HEAD_DENSE_UNITS,
        head_batch_norm: bool = configs.HEAD_BATCH_NORM,
        dropout: float = configs.DROPOUT,
        weight_decay: float = configs.WEIGHT_DECAY,
        augment_flip: str = configs.AUGMENT_FLIP,
        augment_rotation: float = configs.AUGMENT_ROTATION,
        augment_zoom: float = configs.AUGMENT_ZOOM,
        augment_translation: float = configs.AUGMENT_TRANSLATION,
        augment_shear: float = configs.AUGMENT_SHEAR,
        augment_contrast: float = configs.AUGMENT_CONTRAST,
        augment_brightness: float = configs.AUGMENT_BRIGHTNESS,
        augment_color_jitter: float = configs.AUGMENT_COLOR_JITTER,
        augment_blur: float = configs.AUGMENT_BLUR,
        augment_erasing: float = configs.AUGMENT_ERASING,
        augment_fill_mode: str = configs.AUGMENT_FILL_MODE,
        epochs: int = configs.EPOCHS,
        learning_rate: float = configs.LEARNING_RATE,
        optimizer: str = configs.OPTIMIZER,
        lr_schedule: str = configs.LR_SCHEDULE,
        warmup_epochs: int = configs.WARMUP_EPOCHS,
        label_smoothing: float = configs.LABEL_SMOOTHING,
        class_weighting: str = configs.CLASS_WEIGHTING,
        fine_tune_epochs: int = configs.FINE_TUNE_EPOCHS,
        fine_tune_layers: str = configs.FINE_TUNE_LAYERS,
        domain_similarity: str = configs.DOMAIN_SIMILARITY,
        fine_tune_learning_rate: float = configs.FINE_TUNE_LEARNING_RATE,
        early_stopping_patience: int = configs.EARLY_STOPPING_PATIENCE,
        reduce_lr_patience: int = configs.REDUCE_LR_PATIENCE,
        target_accuracy: float = configs.TARGET_ACCURACY,
        cache_budget_mb: int = configs.CACHE_BUDGET_MB,
        head_feature_views: int = configs.HEAD_FEATURE_VIEWS,
        mixed_precision: str = configs.MIXED_PRECISION,
        steps_per_execution: int = configs.STEPS_PER_EXECUTION,
        backend: str = configs.BACKEND,
        train_nodes: int = configs.TRAIN_NODES,
        min_test_accuracy: float = configs.MIN_TEST_ACCURACY,
        top_k: int = configs.TOP_K,
        baseline_model: str = configs.BASELINE_MODEL,
        baseline_tolerance: float = configs.BASELINE_TOLERANCE,
        export_destination: str = configs.EXPORT_DESTINATION,
        model_registry: str = configs.MODEL_REGISTRY,
        registered_model_name: str = configs.REGISTERED_MODEL_NAME,
    ):
        """Transfer-learning image classifier.

        Args:
            data_dir: The images: a folder with one sub-folder per class (local path,
                gs://bucket/prefix or s3://bucket/prefix), a .csv or .parquet listing of
                path,label rows (local or in a bucket), or tfds:NAME[:CONFIG].
            backbone: keras.applications backbone, e.g. MobileNetV2, EfficientNetB0, ResNet50
                (`tlp backbones` lists them with their native sizes), or hub:PRESET, a
                KerasHub preset: a name (hub:dinov2_small; `tlp backbones --hub`), a
                kaggle:// or hf:// handle, or a preset folder (local, gs:// or s3://).
            weights: Backbone weights: imagenet (for hub:PRESET the preset's own), none, or
                the path/URI of a weights file.
            image_size: Images are resized to image_size x image_size pixels; 0: the
                backbone's native size (224 for most, 299 Xception and Inception, up to
                600 EfficientNetB7; a hub:PRESET's own).
            train_ratio: Fraction of each class for training.
            validation_ratio: Fraction of each class for validation.
            test_ratio: Fraction of each class for the test split.
            seed: Seed for the split, shuffling and weight initialisation.
            resize_mode: stretch (ignore aspect ratio), pad (letterbox) or crop (centre).
            image_format: How the shards store images: jpeg, or raw (uint8 pixels: about 16x
                the disk, no JPEG decoding when read; faster only when cached).
            num_workers: Preprocess worker processes; 0: one per CPU.
            shard_size_mb: TFRecord shard size to aim for, in MB (100-200 reads best).
            min_images_per_class: Fail if a class keeps fewer usable images than this.
            max_rejected_fraction: Fail if a larger fraction of the input files is rejected.
            max_image_pixels: Reject larger images (guards against decompression bombs).
            near_duplicate_distance: Images whose perceptual hashes differ by at most this
                many bits of 64 (or those of their 5% crops) form a group, and a group goes
                to one split, so no test image has a near-copy in train; 0: off.
            previous_manifest: Manifest of an earlier run: its images keep their split.
            tfds_data_dir: For tfds: sources, the folder the dataset is prepared in (empty:
                TFDS's default).
            tfds_splits: For tfds: sources, the splits to read, e.g. train,test (empty: all).
            batch_size: Images per training step.
            pooling: Head pooling: avg (global average) or flatten.
            head_dense_units: Hidden dense layers of the head, e.g. 256,128 (empty: none).
            head_batch_norm: Batch normalization after the head's pooling.
            dropout: Dropout rate after each hidden dense layer and before the classifier.
            weight_decay: L2 factor on the head's dense kernels (0: none).
            augment_flip: Random flips: none, horizontal, vertical, horizontal_and_vertical.
            augment_rotation: Random rotation, as a fraction of a full turn.
            augment_zoom: Random zoom, as a fraction of the image size.
            augment_translation: Random shift, as a fraction of the image size.
            augment_shear: Random shear, as a fraction of the image size.
            augment_contrast: Random contrast change factor.
            augment_brightness: Random brightness change factor.
            augment_color_jitter: Random saturation and hue change factor.
            augment_blur: Probability of a random Gaussian blur.
            augment_erasing: Probability of erasing a random patch.
            augment_fill_mode: How geometric augmentations fill the edges: reflect, wrap,
                constant or nearest.
            epochs: Maximum epochs training the head (frozen backbone).
            learning_rate: Learning rate while training the head.
            optimizer: adam, adamw, rmsprop or sgd (momentum 0.9); for both phases.
            lr_schedule: constant, step (/10 after 1/3 and 2/3 of the epochs) or cosine.
            warmup_epochs: Epochs of linear learning-rate warm-up (constant or cosine).
            label_smoothing: Label smoothing factor of the cross-entropy loss.
            class_weighting: auto (balanced when classes are imbalanced), balanced or none.
            fine_tune_epochs: Maximum further epochs with the top backbone layers unfrozen.
            fine_tune_layers: Backbone layers to unfreeze: a count from the top, a fraction
                (0.25: the top quarter), all, a layer name and all above it, or auto (from
                the dataset's size and domain_similarity). BatchNorm stays frozen. KerasHub
                transformers (hub:...) count transformer blocks instead of layers.
            domain_similarity: For fine_tune_layers=auto: are the images similar to ImageNet
                photos (similar) or not (different)?
            fine_tune_learning_rate: Learning rate while fine-tuning.
            early_stopping_patience: Epochs without val_loss improvement before stopping.
            reduce_lr_patience: Epochs without val_loss improvement before dividing the LR by 5.
            target_accuracy: Stop a phase once val_accuracy reaches this.
            cache_budget_mb: Cache decoded images in memory when a split fits this many MB.
            head_feature_views: Train with a pretrained backbone: run the frozen backbone
                once over this many augmented views of each train image and train the head
                on those cached features (in memory within cache_budget_mb, else on local
                disk): far fewer backbone passes, but augmentation limited to these views;
                0: train on the images, augmented afresh each epoch. fine_tune always does.
            mixed_precision: auto (bfloat16 on Ampere or newer GPUs, float16 on older ones,
                none on CPU), bfloat16, float16 or off.
            steps_per_execution: Training steps per compiled call; raise it on GPUs when
                steps are short.
            backend: Keras backend of train and fine_tune: tensorflow or jax (tf.data still
                feeds it; evaluate and export use TensorFlow).
            train_nodes: Nodes train and fine_tune each run on: 1, or N > 1 for a Kubeflow
                Trainer TrainJob of N nodes on its jax-distributed runtime (backend jax; a
                Kubeflow cluster only).
            min_test_accuracy: Export the model only if its test accuracy reaches this.
            top_k: Report top-k accuracy for this k.
            baseline_model: A .keras file or export folder (local, gs:// or s3://) to beat on
                the test split (empty: none).
            baseline_tolerance: Largest test accuracy drop below the baseline still exported.
            export_destination: Folder (local, gs:// or s3://) for a new numbered model
                version (empty: none).
            model_registry: URL of the Kubeflow Model Registry to record each published
                version in, e.g. http://model-registry-service.kubeflow:8080 (empty: none;
                needs a gs:// or s3:// export_destination). Its token comes from the step's
                environment or service account, never from a parameter.
            registered_model_name: Name of the model in the registry; its versions are
                named like the published versions (1, 2, ...).
        """
        params = dict(locals())  # The pipeline's parameters, for the tuning tasks.
        fit_args = dict(batch_size=batch_size, optimizer=optimizer, lr_schedule=lr_schedule,
                        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
                        class_weighting=class_weighting, mixed_precision=mixed_precision,
                        steps_per_execution=steps_per_execution, backend=backend,
                        early_stopping_patience=early_stopping_patience,
                        reduce_lr_patience=reduce_lr_patience, target_accuracy=target_accuracy,
                        cache_budget_mb=cache_budget_mb, seed=seed, train_nodes=train_nodes,
                        # Resolved per task by KFP: they name the step's TrainJob.
                        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER)
        prep, prep_tasks = add_preprocess(cluster.preprocess_parallelism if cluster else 1, dict(
            data_dir=data_dir, backbone=backbone, image_size=image_size,
            train_ratio=train_ratio,
            validation_ratio=validation_ratio, test_ratio=test_ratio, seed=seed,
            resize_mode=resize_mode, image_format=image_format, num_workers=num_workers,
            shard_size_mb=shard_size_mb, min_images_per_class=min_images_per_class,
            max_rejected_fraction=max_rejected_fraction, max_image_pixels=max_image_pixels,
            near_duplicate_distance=near_duplicate_distance,
            previous_manifest=previous_manifest, tfds_data_dir=tfds_data_dir,
            tfds_splits=tfds_splits))
        dataset = prep.outputs["dataset"]
        tuned, tune_tasks = {}, []
        if tunes:
            best, table, tune_tasks = add_tuning(tuning, dataset, params)
            tuned = dict(tuned=best)
        train = kfp_steps.train(
            dataset=dataset, backbone=backbone, weights=weights, pooling=pooling,
            head_dense_units=head_dense_units, head_batch_norm=head_batch_norm, dropout=dropout,
            weight_decay=weight_decay, augment_flip=augment_flip,
            augment_rotation=augment_rotation, augment_zoom=augment_zoom,
            augment_translation=augment_translation, augment_shear=augment_shear,
            augment_contrast=augment_contrast, augment_brightness=augment_brightness,
            augment_color_jitter=augment_color_jitter, augment_blur=augment_blur,
            augment_erasing=augment_erasing, augment_fill_mode=augment_fill_mode,
            epochs=epochs, learning_rate=learning_rate, head_feature_views=head_feature_views,
            **tuned, **fit_args)
        tune = kfp_steps.fine_tune(
            dataset=dataset, trained_model=train.outputs["model"],
            train_history=train.outputs["history"], fine_tune_layers=fine_tune_layers,
            domain_similarity=domain_similarity,
            fine_tune_learning_rate=fine_tune_learning_rate, fine_tune_epochs=fine_tune_epochs,
            **tuned, **fit_args)
        evaluation = kfp_steps.evaluate(
            dataset=dataset, model=tune.outputs["model"],
            initial_model=train.outputs["initial_model"],
            train_history=train.outputs["history"], fine_tune_history=tune.outputs["history"],
            batch_size=batch_size, top_k=top_k, min_test_accuracy=min_test_accuracy,
            baseline_model=baseline_model, baseline_tolerance=baseline_tolerance,
            **(dict(tuning=table) if tunes else {}))
        with dsl.If(evaluation.outputs["Output"] == True,  # noqa: E712
                    name="export-approved"):
            export = kfp_steps.export(
                dataset=dataset, model=tune.outputs["model"],
                evaluation=evaluation.outputs["evaluation"],
                train_history=train.outputs["history"],
                fine_tune_history=tune.outputs["history"], backbone=backbone,
                export_destination=export_destination)
            with dsl.If(model_registry != "", name="model-registry-set"):
                register = kfp_steps.register(
                    model_registry=model_registry,
                    registered_model_name=registered_model_name,
                    published=export.outputs["Output"],
                    exported_model=export.outputs["exported_model"],
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        for step, task in (*(("preprocess", task) for task in prep_tasks), *tune_tasks,
                           ("train", train), ("fine_tune", tune), ("evaluate", evaluation),
                           ("export", export), ("register", register)):
            if cluster:
                cluster.configure(task, step)
            elif image:
                task.set_container_image(image)

    return pipeline
