"""Image decoding shared by training and serving, so a served prediction sees exactly the trained pixels.

`decode_and_resize` is the one decode path: `pipeline.make_dataset` maps it over fetched bytes, and the
exporter calls it inside the serving signature. It returns raw RGB pixels (float32, 0..255); the model holds
the backbone's ``preprocess_input`` as a layer. `is_decodable` is the cheap host-side check the loader runs
once per object to skip empty, truncated or non-image files before they reach TensorFlow.

`check_image` is that check with the decoded pixels kept where Pillow's decode is exactly TensorFlow's (PNG
of 8 bits or fewer per sample, one frame, small enough): `resize_pixels` then resizes a batch of them in one
TensorFlow op, the same resize `decode_and_resize` runs, so in-memory splits skip a tf.data decode pipeline
(about half a second to start) without changing a single trained pixel.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["DECODABLE_FORMATS", "HOST_DECODE_MAX_PIXELS", "check_image", "decode_and_resize", "is_decodable"]

# Formats Pillow recognises that tf.io.decode_image also decodes (MPO: multi-picture JPEG from cameras).
DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
# TensorFlow's BMP decoder reads 8-bit grayscale, 24-bit and 32-bit pixels only.
_BMP_MODES = frozenset({"L", "RGB", "RGBA"})
_MAX_PIXELS = 100_000_000  # larger images are refused (decompression-bomb guard)
# Pillow modes of 8-bit-or-less PNGs whose RGB conversion equals tf.io.decode_png(channels=3): gray is
# replicated, palettes are looked up, alpha (and tRNS transparency) is dropped without compositing.
_HOST_PNG_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})
# Larger images are left to TensorFlow: their pixels would be held until resized, and a pipeline's start-up
# is small beside decoding them.
HOST_DECODE_MAX_PIXELS = 256 * 256


def decode_and_resize(encoded: tf.Tensor, image_size: int, box: tf.Tensor | None = None) -> tf.Tensor:
    """Decode one encoded image to RGB, crop it to ``box``, and resize it to a square.

    JPEG, PNG, BMP, GIF (first frame) and WebP are read; grayscale, RGBA and palette images become RGB.

    Args:
        encoded: A scalar ``tf.string`` holding the file's bytes.
        image_size: Side of the square output in pixels.
        box: Optional int ``[xmin, ymin, xmax, ymax]`` in pixels (max exclusive), clipped to the image; a box
            without area (e.g. all zeros) keeps the whole image.

    Returns:
        A float32 tensor ``[image_size, image_size, 3]`` with values in 0..255, not preprocessed.
    """
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    if box is not None:
        image = _crop(image, tf.cast(box, tf.int32))
    return resize_pixels(image, image_size)


def resize_pixels(images: tf.Tensor | np.ndarray, image_size: int) -> tf.Tensor:
    """Resize uint8 RGB pixels ``[H, W, 3]`` or a batch ``[N, H, W, 3]`` to float32 squares in 0..255.

    The one resize of training and serving: bilinear, antialiased where the image shrinks in either
    direction. Enlarging needs no antialiasing: the antialiasing filter is then plain bilinear interpolation
    (the results agree to float rounding, within 0.001 of 255) and costs ten times as much (26 ms against
    2.7 ms for 512 images from 28 to 32 px here). A batch gives each image exactly what it would give alone.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    size = [image_size, image_size]

    def resize(antialias: bool) -> tf.Tensor:
        return tf.image.resize(images, size, method="bilinear", antialias=antialias)

    height, width = images.shape[-3], images.shape[-2]
    if height is not None and width is not None:
        resized = resize(antialias=height > image_size or width > image_size)
    else:
        shape = tf.shape(images)
        enlarges = tf.logical_and(shape[-3] <= image_size, shape[-2] <= image_size)
        resized = tf.cond(enlarges, lambda: resize(False), lambda: resize(True))
    return tf.clip_by_value(tf.cast(resized, tf.float32), 0.0, 255.0)


def crop_to_box(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """Crop a decoded ``[H, W, C]`` image to ``[xmin, ymin, xmax, ymax]`` as training does (clipped)."""
    import tensorflow as tf

    return _crop(image, tf.cast(box, tf.int32))


def _crop(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    xmin = tf.clip_by_value(box[0], 0, width - 1)
    ymin = tf.clip_by_value(box[1], 0, height - 1)
    xmax = tf.clip_by_value(box[2], xmin + 1, width)
    ymax = tf.clip_by_value(box[3], ymin + 1, height)
    has_area = tf.logical_and(box[2] > box[0], box[3] > box[1])
    xmin, ymin = tf.where(has_area, xmin, 0), tf.where(has_area, ymin, 0)
    xmax, ymax = tf.where(has_area, xmax, width), tf.where(has_area, ymax, height)
    return image[ymin:ymax, xmin:xmax, :]


def is_decodable(data: bytes) -> bool:
    """Whether ``data`` is a complete image that `decode_and_resize` can read.

    Runs Pillow on the host: empty, truncated, non-image, unsupported (e.g. TIFF, 1-bit BMP) and absurdly
    large images are refused. JPEGs are decoded at reduced scale, so the check stays cheap.

    Args:
        data: The file's bytes.

    Returns:
        True if the image decodes fully.
    """
    return check_image(data)[0]


def check_image(data: bytes, *, keep_pixels: bool = False) -> tuple[bool, np.ndarray | None]:
    """`is_decodable`, optionally keeping the RGB pixels where Pillow decodes exactly as TensorFlow does.

    Args:
        data: The file's bytes.
        keep_pixels: Return the decoded pixels of a PNG of 8 bits or fewer per sample (one frame, at most
            `HOST_DECODE_MAX_PIXELS`), which the check decodes anyway.

    Returns:
        ``(decodable, pixels)``: pixels are uint8 ``[H, W, 3]`` equal to ``tf.io.decode_image(data,
        channels=3)``, or None where TensorFlow has to decode (other formats, deeper PNGs, not asked).
    """
    if not data:
        return False, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in DECODABLE_FORMATS:
                    return False, None
                if image.format == "BMP" and image.mode not in _BMP_MODES:
                    return False, None
                if image.width * image.height > _MAX_PIXELS or min(image.size) < 1:
                    return False, None
                if image.format in ("JPEG", "MPO"):
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
                if keep_pixels and _host_decodes_exactly(image, data):
                    return True, np.asarray(image.convert("RGB"))
    except Exception:  # Pillow's plugins raise assorted errors (OSError, SyntaxError, ...) on hostile input
        return False, None
    return True, None


def _host_decodes_exactly(image: Image.Image, data: bytes) -> bool:
    """Whether Pillow's RGB of this loaded image is TensorFlow's, pixel for pixel (see `_HOST_PNG_MODES`)."""
    return (
        image.format == "PNG"
        and image.mode in _HOST_PNG_MODES
        and data[24] <= 8  # IHDR bit depth: Pillow and libpng narrow 16-bit samples differently
        and not getattr(image, "is_animated", False)
        and image.width * image.height <= HOST_DECODE_MAX_PIXELS
    )
