"""Image decoding for the preprocess step: any input mode -> 8-bit RGB, resized, as JPEG
or raw pixels.

Only PIL and NumPy here (no TensorFlow), so worker processes start fast; inputs are read
through components.sources.
"""
import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from components import configs, near_duplicates, sources

RESIZE_MODES = ("stretch", "pad", "crop")
WHITE = (255, 255, 255)


class Rejected(Exception):
    """An input that cannot become a training image; reason is one of configs.REJECT_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class EncodeOptions:
    image_size: int
    resize_mode: str = configs.RESIZE_MODE
    max_pixels: int = configs.MAX_IMAGE_PIXELS
    image_format: str = configs.IMAGE_FORMAT

    def __post_init__(self):
        if self.image_format not in configs.IMAGE_FORMATS:
            raise ValueError(f"image_format={self.image_format!r}; choose one of "
                             f"{', '.join(configs.IMAGE_FORMATS)}")


@dataclass
class Encoded:
    """What a worker returns for one file: its hash and encoded image, or why it was
    rejected."""
    sha256: str
    encoded: bytes = b""
    phashes: list[int] = field(default_factory=list)  # near_duplicates.perceptual_hashes
    reason: str = ""
    detail: str = ""


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16/32-bit greyscale is scaled (not clipped), transparency is
    composited on white, palette, CMYK, 1-bit and greyscale are converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit PNGs and TIFFs open as I or I;16; convert("L") would clip at 255.
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def resize(image: Image.Image, size: int, mode: str) -> Image.Image:
    """stretch: ignore the aspect ratio; pad: fit inside and letterbox with black;
    crop: fill and cut the centre."""
    target = (size, size)
    method = Image.Resampling.BILINEAR
    if mode == "stretch":
        return image.resize(target, method)
    if mode == "pad":
        return ImageOps.pad(image, target, method, color=(0, 0, 0))
    if mode == "crop":
        return ImageOps.fit(image, target, method)
    raise ValueError(f"resize_mode={mode!r}; choose one of {', '.join(RESIZE_MODES)}")


def _read_error(error: OSError) -> Rejected:
    reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
    return Rejected(reason, str(error))


def load_image(data: bytes, options: EncodeOptions) -> Image.Image:
    """Decodes any PIL-readable image, applies EXIF orientation and converts to 8-bit RGB
    (not yet resized). Raises Rejected, whatever the bytes: no input may stop the run."""
    try:
        with warnings.catch_warnings():
            # Our own limit below applies; PIL still refuses over twice its default.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise Rejected("too large", str(error)) from error
    except UnidentifiedImageError as error:
        raise Rejected("unreadable", "not an image PIL can identify") from error
    except OSError as error:  # A header cut short.
        raise _read_error(error) from error
    except Exception as error:  # noqa: BLE001 - PIL's plugins raise many kinds on bad bytes.
        raise Rejected("unreadable", f"{type(error).__name__}: {error}") from error
    with image:
        pixels = image.width * image.height
        if pixels > options.max_pixels:  # Checked on the header, before decoding.
            raise Rejected("too large", f"{image.width}x{image.height} = {pixels} pixels, "
                                        f"over max_image_pixels={options.max_pixels}")
        try:
            # JPEG only: decode at the smallest 1/2^k scale still >= the target (faster), and
            # >= the thumbnail near_duplicates hashes, so that hashes do not depend on it.
            size = max(options.image_size, near_duplicates.THUMBNAIL)
            image.draft("RGB", (size, size))
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
        except OSError as error:
            raise _read_error(error) from error
        except Exception as error:  # noqa: BLE001 - as above (ValueError, SyntaxError, ...).
            raise Rejected("unreadable", f"{type(error).__name__}: {error}") from error


def encode_loaded(image: Image.Image, options: EncodeOptions) -> bytes:
    """An RGB image resized to image_size x image_size, in options.image_format: JPEG bytes,
    or the raw uint8 pixels (height, width, RGB; what tf.io.decode_raw reads)."""
    image = resize(image, options.image_size, options.resize_mode)
    if options.image_format == "raw":
        return image.tobytes()
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=configs.JPEG_QUALITY)
    return out.getvalue()


def encode_image(data: bytes, options: EncodeOptions) -> bytes:
    """load_image, then encode_loaded. Raises Rejected."""
    return encode_loaded(load_image(data, options), options)


def hash_and_encode(ref: str | bytes, options: EncodeOptions) -> Encoded:
    """The worker task: one input (a path, bucket URI or the bytes themselves) in, its sha256,
    perceptual hashes and encoded image (or rejection) out. Bucket objects are read here, in
    the worker, in parallel."""
    try:
        data = sources.read(ref)
    except FileNotFoundError as error:
        return Encoded("", reason="missing", detail=str(error))
    except OSError as error:  # No permission, a folder, a link loop, an I/O error.
        return Encoded("", reason="unreadable", detail=error.strerror or str(error))
    result = Encoded(hashlib.sha256(data).hexdigest())
    try:
        image = load_image(data, options)
        result.phashes = near_duplicates.perceptual_hashes(image)
        result.encoded = encode_loaded(image, options)
    except Rejected as rejected:
        result.reason, result.detail = rejected.reason, rejected.detail
    return result
