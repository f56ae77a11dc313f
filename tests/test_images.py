import io

import numpy as np
import pytest
from PIL import Image

from components import images

RED, WHITE, BLACK = (200, 30, 30), (255, 255, 255), (0, 0, 0)


def _bytes(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save_args)
    return out.getvalue()


def _decode(data: bytes, size: int = 16, mode: str = "stretch") -> np.ndarray:
    jpeg = images.encode_image(data, images.EncodeOptions(size, mode))
    with Image.open(io.BytesIO(jpeg)) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (size, size))
        return np.asarray(image).astype(int)


def _close(pixel, colour, tolerance=12):
    return np.all(np.abs(np.asarray(pixel) - colour) <= tolerance)


def _transparent_red() -> Image.Image:
    image = Image.new("RGBA", (20, 20), RED + (255,))
    image.paste((0, 0, 0, 0), (0, 0, 20, 10))  # Top half fully transparent.
    return image


@pytest.mark.parametrize("make, top, bottom", [
    (lambda: Image.new("L", (20, 20), 90), (90,) * 3, (90,) * 3),
    (lambda: Image.new("1", (20, 20), 1), WHITE, WHITE),
    (lambda: Image.new("RGB", (20, 20), RED).convert("P"), RED, RED),
    (_transparent_red, WHITE, RED),
    (lambda: _transparent_red().convert("LA"), WHITE, (int(0.299 * 200 + 0.587 * 30
                                                           + 0.114 * 30),) * 3),
    (lambda: _transparent_red().convert("P"), WHITE, RED),
    (lambda: Image.new("CMYK", (20, 20), (0, 255, 255, 0)), (255, 0, 0), (255, 0, 0)),
    # 16-bit greyscale: 0x8080 is mid-grey, not clipped to white.
    (lambda: Image.fromarray(np.full((20, 20), 0x8080, np.uint16)), (128,) * 3, (128,) * 3),
])
def test_every_colour_mode_becomes_8bit_rgb(make, top, bottom):
    source = make()
    fmt = "JPEG" if source.mode == "CMYK" else "PNG"
    pixels = _decode(_bytes(source, fmt))
    assert _close(pixels[2, 8], top), pixels[2, 8]
    assert _close(pixels[13, 8], bottom), pixels[13, 8]


def test_16bit_png_is_read_as_16bit():
    data = _bytes(Image.fromarray(np.full((20, 20), 0x8080, np.uint16)))
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode.startswith("I")


def _bands(width=60, height=30) -> Image.Image:
    """Green | red | blue vertical bands, the red one a centred square."""
    image = Image.new("RGB", (width, height), RED)
    image.paste((30, 200, 30), (0, 0, 15, height))
    image.paste((30, 30, 200), (45, 0, width, height))
    return image


def test_resize_modes():
    stretch = _decode(_bytes(_bands()), 30, "stretch")
    assert _close(stretch[15, 1], (30, 200, 30)) and _close(stretch[15, 28], (30, 30, 200))
    pad = _decode(_bytes(_bands()), 30, "pad")  # 60x30 -> 30x15 with bars above and below.
    assert _close(pad[1, 15], BLACK) and _close(pad[28, 15], BLACK)
    assert _close(pad[15, 15], RED) and _close(pad[15, 1], (30, 200, 30))
    crop = _decode(_bytes(_bands()), 30, "crop")  # The centre square: red only.
    assert _close(crop[15, 1], RED) and _close(crop[15, 28], RED)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotated: displays as 30 wide, 60 tall.
    data = _bytes(_bands(), "JPEG", exif=exif, quality=95)
    padded = _decode(data, 30, "pad")  # Tall after rotation: bars left and right.
    assert _close(padded[15, 1], BLACK) and _close(padded[15, 28], BLACK)
    assert _close(padded[15, 15], RED)


def test_pixel_limit_rejects_before_decoding():
    data = _bytes(Image.new("RGB", (200, 100), RED))
    with pytest.raises(images.Rejected, match="200x100 = 20000 pixels") as caught:
        images.encode_image(data, images.EncodeOptions(16, max_pixels=19_999))
    assert caught.value.reason == "too large"
    assert _decode(data).shape == (16, 16, 3)


def test_unknown_resize_mode_is_an_error():
    with pytest.raises(ValueError, match="resize_mode='squash'"):
        images.resize(Image.new("RGB", (4, 4)), 2, "squash")
