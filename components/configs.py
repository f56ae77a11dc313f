"""The one place for constants: feature keys, defaults, image names, file layout."""
from pathlib import Path

PIPELINE_NAME = "transfer-learning-classifier"
VERSION = "0.1.0"

# Container images the pipeline's steps run in (built from docker/).
CPU_IMAGE = f"ghcr.io/tlp-project/tlp-cpu:{VERSION}"
GPU_IMAGE = f"ghcr.io/tlp-project/tlp-gpu:{VERSION}"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_COUNT = 1

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
SHARD_TARGET_BYTES = 128 * 1024 * 1024
JPEG_QUALITY = 95
# Manifest statuses, and the reasons a file is rejected.
STATUSES = ("written", "duplicate", "rejected")
REJECT_REASONS = ("unreadable", "truncated", "unsupported", "too large", "conflict")
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.txt"
KERAS_MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
HISTORY_FILE = "history.json"

# Pipeline parameter defaults (the pipeline signature and the CLI read them from here).
BACKBONE = "MobileNetV2"
WEIGHTS = "imagenet"
IMAGE_SIZE = 160
TRAIN_RATIO = 0.8
VALIDATION_RATIO = 0.1
TEST_RATIO = 0.1
SEED = 42
RESIZE_MODE = "stretch"
MAX_IMAGE_PIXELS = 100_000_000  # Decompression-bomb guard: larger images are rejected.
MIN_IMAGES_PER_CLASS = 5
MAX_REJECTED_FRACTION = 0.1
NUM_WORKERS = 0  # 0: one worker process per CPU of the machine running the step.
PREVIOUS_MANIFEST = ""
BATCH_SIZE = 32
POOLING = "avg"
DROPOUT = 0.2
AUGMENT_FLIP = "horizontal"
AUGMENT_ROTATION = 0.05
AUGMENT_ZOOM = 0.1
AUGMENT_TRANSLATION = 0.1
AUGMENT_CONTRAST = 0.1
EPOCHS = 10
LEARNING_RATE = 1e-3
FINE_TUNE_EPOCHS = 5
FINE_TUNE_LAYERS = 30
FINE_TUNE_LEARNING_RATE = 1e-5
EARLY_STOPPING_PATIENCE = 3
REDUCE_LR_PATIENCE = 2
TARGET_ACCURACY = 1.0
CACHE_BUDGET_MB = 2048
MIN_TEST_ACCURACY = 0.5

# The bundled demo data and the offline demo weights.
REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA_DIR = REPO_ROOT / "data" / "fashion-mnist-sample"
DEFAULT_PIPELINE_ROOT = "runs"
