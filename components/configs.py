"""The one place for constants: feature keys, defaults, image names, file layout."""
from pathlib import Path

PIPELINE_NAME = "transfer-learning-classifier"
VERSION = "0.1.0"

# Container images the pipeline's steps run in (built from docker/); `tlp compile
# --image-registry` swaps the registry, never the names or the tag.
IMAGE_REGISTRY = "ghcr.io/tlp-project"
CPU_IMAGE_NAME = "tlp-cpu"
GPU_IMAGE_NAME = "tlp-gpu"


def image(name: str, registry: str = IMAGE_REGISTRY) -> str:
    """The full reference of one of the project's images, tagged with the version."""
    return f"{registry.rstrip('/')}/{name}:{VERSION}"


CPU_IMAGE = image(CPU_IMAGE_NAME)
GPU_IMAGE = image(GPU_IMAGE_NAME)

# Where a compiled pipeline runs: kfp, a Kubeflow cluster (the open-source KFP backend), or
# vertex, Vertex AI Pipelines (no Kubernetes settings; pipeline root and exports on gs://).
TARGETS = ("kfp", "vertex")
TARGET = "kfp"
# Vertex AI's names of its GPUs (AcceleratorType in google-cloud-aiplatform, a test checks),
# the accelerator type of the GPU steps on Vertex; on kfp it is the Kubernetes resource name.
VERTEX_GPU_TYPES = ("NVIDIA_TESLA_T4", "NVIDIA_TESLA_P4", "NVIDIA_TESLA_P100",
                    "NVIDIA_TESLA_V100", "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB", "NVIDIA_L4",
                    "NVIDIA_H100_80GB", "NVIDIA_H100_MEGA_80GB", "NVIDIA_H200_141GB",
                    "NVIDIA_B200", "NVIDIA_GB200", "NVIDIA_RTX_PRO_6000")
VERTEX_GPU_TYPE = "NVIDIA_L4"  # Fits train's 4 CPUs and 16 GiB: a g2-standard-4 machine.
VERTEX_REGION = "us-central1"

# Cluster defaults for compiled pipelines (tlp compile/submit flags override them).
GPU_RESOURCE = "nvidia.com/gpu"
GPU_COUNT = 1
# No node selector by default: a label the cluster lacks would leave the GPU steps pending
# for ever. The toleration matches the taint GKE and most GPU node pools carry.
GPU_NODE_SELECTOR: dict[str, str] = {}
GPU_TOLERATIONS = ("nvidia.com/gpu:NoSchedule",)
# Set on the GPU steps of a pipeline compiled with GPUs (value: their count): train and
# fine_tune then fail with a clear error when their backend finds no GPU, rather than
# train on the CPU (components/accelerators.py, check_required_gpus).
REQUIRE_GPU_ENV = "TLP_REQUIRE_GPU"
# (CPU, memory) requested by each step; the GPU steps hold the decoded-image cache.
STEP_RESOURCES = {
    "preprocess": ("2", "4Gi"),
    "train": ("4", "16Gi"),
    "fine_tune": ("4", "16Gi"),
    "evaluate": ("2", "8Gi"),
    "export": ("1", "4Gi"),
    "register": ("1", "1Gi"),
    # Tuning (tune_trials > 0): the trials train like train; sample and select are small.
    "tune_sample": ("1", "2Gi"),
    "tune_trial": ("4", "16Gi"),
    "tune_select": ("1", "2Gi"),
}
# Retries for the GPU steps, which preemptible/spot nodes can kill mid-run.
RETRIES = 2
# Pods the preprocess step fans out over (1: one step, as kfp.local runs it).
PREPROCESS_PARALLELISM = 1
RETRY_BACKOFF = "60s"
RETRY_BACKOFF_FACTOR = 2.0
RETRY_BACKOFF_MAX = "3600s"
IMAGE_PULL_POLICY = "IfNotPresent"  # The tags are versions, never moved.

# Training over several nodes (train_nodes > 1): train and fine_tune each create a Kubeflow
# Trainer TrainJob (v2.2+) on its jax-distributed ClusterTrainingRuntime, which starts one pod
# per node and gives each the JAX_* variables below; the step waits for it and collects the
# model (components/trainjob.py, components/node_training.py).
TRAIN_NODES = 1
TRAINJOB_GROUP = "trainer.kubeflow.org"
TRAINJOB_VERSION = "v1alpha1"
TRAINJOB_PLURAL = "trainjobs"
TRAINJOB_KIND = "TrainJob"
TRAINJOB_RUNTIME = "jax-distributed"
# The runtime's container that runs the trainer, and the pods' label naming their TrainJob
# (its JobSet has the TrainJob's name).
TRAINJOB_CONTAINER = "node"
TRAINJOB_POD_LABEL = "jobset.sigs.k8s.io/jobset-name"
# Who owns the TrainJob's runtime patch (node selector, tolerations, service account).
TRAINJOB_PATCH_MANAGER = "tlp.kubeflow.org/pipeline"
TRAINJOB_POLL_SECONDS = 15.0
# Set by the compiled pipeline on train and fine_tune: JSON of the TrainJob's node settings
# (image, GPUs, node selector, tolerations, env; pipeline.ClusterOptions.node_settings); its
# namespace and service account come from the pod itself (Kubernetes field paths).
TRAINJOB_SETTINGS_ENV = "TLP_TRAINJOB_SETTINGS"
NAMESPACE_ENV = "TLP_NAMESPACE"
SERVICE_ACCOUNT_ENV = "TLP_SERVICE_ACCOUNT"
# A step compiled with --train-nodes N > 1 only launches and watches TrainJobs: it runs in
# the CPU image with these requests, and the nodes get the step's own.
TRAINJOB_LAUNCHER_RESOURCES = ("500m", "1Gi")
# What the jax-distributed runtime sets in each node's pod (Trainer v2.2 puts the port in the
# address: NAME-node-0-0.NAME:29500; a separate _PORT is honoured where a runtime sets one).
JAX_NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
JAX_PROCESS_ID_ENV = "JAX_PROCESS_ID"
JAX_COORDINATOR_ADDRESS_ENV = "JAX_COORDINATOR_ADDRESS"
JAX_COORDINATOR_PORT_ENV = "JAX_COORDINATOR_PORT"

# `tlp run --local --docker`: pipeline parameters that may name local files or folders, mounted
# into the step containers at the same path (read-only, except the export destination), and
# the container network (host: no bridge needed, and weights=imagenet can still download).
DOCKER_INPUT_PATHS = ("data_dir", "weights", "previous_manifest", "baseline_model")
DOCKER_OUTPUT_PATHS = ("export_destination",)
DOCKER_NETWORK = "host"
# `tlp run --local` progress (pipelines/progress.py): each step's whole output goes to
# <run>/LOGS_DIR/<step>.log; the console gets one line per step start and end, and one per
# epoch from the line starting with EPOCH_MARKER that train and fine_tune print after each
# epoch (followed by the epoch's logs as JSON); a failed step's last FAILURE_LOG_LINES lines.
LOGS_DIR = "logs"
EPOCH_MARKER = "tlp-epoch"
FAILURE_LOG_LINES = 40
# How often `tlp submit --wait` asks for the run's state, in seconds.
SUBMIT_POLL_SECONDS = 15.0

# TFRecord feature keys, as in tensorflow/models official/vision/data/tfrecord_lib.py.
KEY_ENCODED = "image/encoded"
KEY_FORMAT = "image/format"
KEY_LABEL = "image/class/label"
KEY_LABEL_TEXT = "image/class/text"
KEY_FILENAME = "image/filename"
KEY_SHA256 = "image/key/sha256"
KEY_HEIGHT = "image/height"
KEY_WIDTH = "image/width"

SPLITS = ("train", "validation", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
JPEG_QUALITY = 95
# Manifest statuses, and the reasons a file is rejected.
STATUSES = ("written", "duplicate", "rejected")
REJECT_REASONS = ("unreadable", "truncated", "unsupported", "too large", "conflict", "missing",
                  "unlabelled")
LISTING_COLUMNS = ("path", "label")  # Of a .csv/.parquet listing source.
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.txt"
KERAS_MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
HISTORY_FILE = "history.json"
TFLITE_FILE = "model.tflite"
TFLITE_QUANTIZED_FILE = "model_quantized.tflite"
MODEL_CARD_FILE = "model_card.json"
SERVING_IMAGES_SIGNATURE = "serving_images"  # Float images already at the model's size.

# Evaluation and the HTML report.
CALIBRATION_BINS = 10
REPORT_WRONG_IMAGES = 16

# Pipeline parameter defaults (the pipeline signature and the CLI read them from here).
BACKBONE = "MobileNetV2"
WEIGHTS = "imagenet"
# 0: the backbone's native size, the one its ImageNet weights were trained at (`tlp
# backbones` lists them); resolved once, by backbone_catalog.resolve_image_size.
IMAGE_SIZE = 0
TRAIN_RATIO = 0.8
VALIDATION_RATIO = 0.1
TEST_RATIO = 0.1
SEED = 42
RESIZE_MODE = "stretch"
# How the shards store pixels: "jpeg" (small) or "raw" (uint8 arrays, image_size^2 * 3 bytes
# each, ~16x the disk at 160 px, read without JPEG decoding; see README, Performance).
IMAGE_FORMAT = "jpeg"
IMAGE_FORMATS = ("jpeg", "raw")
MAX_IMAGE_PIXELS = 100_000_000  # Decompression-bomb guard: larger images are rejected.
# Near-duplicate groups (components/near_duplicates.py): images whose 64-bit perceptual
# hashes differ by at most this many bits go to one split (0: off). 4 by measurement (README,
# Near-duplicates): it finds resized, re-encoded, brightened and 5%-cropped copies, and on the
# bundled sample only 5 groups of look-alikes; 6 chains many distinct ones.
NEAR_DUPLICATE_DISTANCE = 4
MAX_NEAR_DUPLICATE_DISTANCE = 12
# Each image is also hashed with this fraction of its width, height or both cut at one side
# or half at each, so copies cropped so are found too.
NEAR_DUPLICATE_CROP = 0.05
MIN_IMAGES_PER_CLASS = 5
MAX_REJECTED_FRACTION = 0.1
NUM_WORKERS = 0  # 0: one worker process per CPU of the machine running the step.
SHARD_SIZE_MB = 128  # TFRecord shard size to aim for (TensorFlow's guidance: 100-200 MB).
PREVIOUS_MANIFEST = ""
TFDS_DATA_DIR = ""  # Empty: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
TFDS_SPLITS = ""  # Empty: every split of the dataset.
BATCH_SIZE = 32
POOLING = "avg"
DROPOUT = 0.2
HEAD_DENSE_UNITS = ""
HEAD_BATCH_NORM = False
WEIGHT_DECAY = 0.0
OPTIMIZER = "adam"
LR_SCHEDULE = "constant"
WARMUP_EPOCHS = 0
LABEL_SMOOTHING = 0.0
CLASS_WEIGHTING = "auto"
AUGMENT_FLIP = "horizontal"
AUGMENT_ROTATION = 0.05
AUGMENT_ZOOM = 0.1
AUGMENT_TRANSLATION = 0.1
AUGMENT_SHEAR = 0.0
AUGMENT_CONTRAST = 0.1
AUGMENT_BRIGHTNESS = 0.1
AUGMENT_COLOR_JITTER = 0.0
AUGMENT_BLUR = 0.0
AUGMENT_ERASING = 0.0
AUGMENT_FILL_MODE = "reflect"
EPOCHS = 10
LEARNING_RATE = 1e-3
FINE_TUNE_EPOCHS = 5
FINE_TUNE_LAYERS = "30"
DOMAIN_SIMILARITY = "different"
# A tenth of the head's rate (the Keras and TensorFlow guides' ratio). On the demo 1e-4 found
# a lower validation loss than 1e-5, which left validation accuracy flat (README: Demo time).
FINE_TUNE_LEARNING_RATE = 1e-4
EARLY_STOPPING_PATIENCE = 3
REDUCE_LR_PATIENCE = 2
TARGET_ACCURACY = 1.0
CACHE_BUDGET_MB = 2048
# The train step's head phase: with a pretrained (frozen) backbone, train the head on cached
# backbone features of this many augmented views of each train image (0: train on the
# images, augmented afresh each epoch). 1 by measurement (bench/head_phase.py, README): on the
# demo, 1, 2 and 4 views scored the same within a test image or two, at 6.8x, 4.7x and 2.1x
# the speed of training on the images.
HEAD_FEATURE_VIEWS = 1
MIXED_PRECISION = "auto"
# Keras backends train and fine_tune can run on; evaluate and export always use TensorFlow
# (the saved .keras model is the same on either).
BACKENDS = ("tensorflow", "jax")
BACKEND = "tensorflow"
# BatchNorm momentum of a backbone trained from scratch (weights=none). keras.applications use
# 0.99 or 0.999, made for runs of 100,000s of steps: after a short run their moving statistics
# still mostly hold the initial values and the model predicts one class in inference mode.
FROM_SCRATCH_BATCH_NORM_MOMENTUM = 0.9
STEPS_PER_EXECUTION = 1
# On JAX, batches train and fine_tune copy to the device ahead of the step, from a background
# thread (components/device_feed.py).
DEVICE_FEED_DEPTH = 3
MIN_TEST_ACCURACY = 0.5
TOP_K = 3
BASELINE_MODEL = ""  # Empty: no baseline to compare with.
BASELINE_TOLERANCE = 0.01
EXPORT_DESTINATION = ""  # Empty: the export step's artifact only.
# Kubeflow Model Registry (components/model_registry.py): the server's URL (empty: no
# register step) and the name versions are registered under (the InferenceService's too).
MODEL_REGISTRY = ""
REGISTERED_MODEL_NAME = "tlp-classifier"
MODEL_FORMAT = "tensorflow"  # The registered artifact's format: KServe's TF Serving runtime.
# Where the register step's token comes from when set (else the pod's service account's).
MODEL_REGISTRY_TOKEN_ENV = "MODEL_REGISTRY_TOKEN"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# Tuning (components/tuning.py): compile-time options, like the preprocess parallelism,
# because they shape the DAG (one ParallelFor of trials per round). 0 trials: no tuning,
# the pipeline exactly as without it.
TUNE_TRIALS = 0
TUNE_ROUNDS = 2
TUNE_PARALLELISM = 2  # Trials at a time, per round; locally they share the machine's cores.
# Successive halving: each round keeps this fraction of its trials (at least one) and gives
# them 1/TUNE_KEEP times the train images (8 trials, 2 rounds: 8, then the best 3).
TUNE_KEEP = 1 / 3
# Round 1's trials train on this seeded per-class share of the train split, each later round
# on 1/TUNE_KEEP times more, up to all of it (8 trials, 2 rounds: 8 on 1/9, the best 3 on 1/3).
TUNE_TRAIN_FRACTION = 1 / 9
# The trials' fine-tune work (trials x share x fine-tune epochs), in untuned runs', which the
# round plan's fine-tune epochs keep within: fine-tuning is what a trial's time goes on, and
# the whole tuned run should cost at most about 3 untuned ones. Measured with 8 trials
# (README: Tuning benchmark): 1.5 (3 fine-tune epochs a trial) took 3.01 untuned runs, 1.0
# (2 epochs) 2.43, and picked the same best trial.
TUNE_BUDGET = 1.0
# Parameters a search space may not name: the trials share the preprocessed dataset (so
# none of preprocess's), the tuner sets the epochs, and the rest is how, not what, to train.
TUNE_FIXED = ("backbone", "weights", "epochs", "fine_tune_epochs", "backend",
              "mixed_precision", "steps_per_execution", "cache_budget_mb", "seed",
              "target_accuracy")
# A searchable knob that is no pipeline parameter: it multiplies these augmentation
# strengths (their configured values), which the best configuration then names one by one.
TUNE_AUGMENT_SCALE = "augment_scale"
TUNE_AUGMENT_SCALED = ("augment_rotation", "augment_zoom", "augment_translation",
                       "augment_contrast", "augment_brightness")
# The default search space (`--search-space FILE` replaces it), the same YAML form. The batch
# size is in it because, at a fixed epoch count, it sets the number of updates: on
# bench.tuning's Fashion-MNIST subset these each gained, in test accuracy points over the
# recipe alone: batch 16 (not 32) 0.9, augmentation x0.5 1.0, fine-tune rate 3e-4 0.6,
# label smoothing 0.1 0.2; batch 16, augmentation x0.5 and label smoothing 0.1 together 2.1
# (README: Tuning benchmark).
TUNE_SEARCH_SPACE = {
    "learning_rate": {"log_uniform": [1e-4, 1e-2]},
    "fine_tune_layers": {"choice": ["10", "30", "60", "100"]},
    "fine_tune_learning_rate": {"log_uniform": [1e-5, 1e-3]},
    "dropout": {"uniform": [0.0, 0.5]},
    TUNE_AUGMENT_SCALE: {"uniform": [0.0, 2.0]},
    "batch_size": {"choice": [16, 32, 64]},
    "label_smoothing": {"uniform": [0.0, 0.2]},
}
# What `tlp run --local` writes into the run's folder after tuning: the best configuration
# as a config file (`tlp run --local --config FILE`).
TUNED_CONFIG_FILE = "tuned-config.yaml"

# The bundled demo data and the offline demo weights.
REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA_DIR = REPO_ROOT / "data" / "fashion-mnist-sample"
# `--demo`'s fine-tune epochs: over four seeds 0.6 points below 5 epochs' test accuracy on
# average for about 40% of fine_tune's time; 1 epoch was 0.9 points lower again (README: Demo
# time).
DEMO_FINE_TUNE_EPOCHS = 2
DEFAULT_PIPELINE_ROOT = "runs"
