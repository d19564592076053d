"""decode_and_resize on real encoded files: every supported format and colour mode becomes RGB of the size."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kubegraft_trainer.images import decode_and_resize, resize_pixels

COLOR = (200, 40, 90)


def solid(mode: str, fmt: str, size: tuple[int, int] = (37, 23)) -> bytes:
    image = Image.new("RGB", size, COLOR)
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(128)
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("PNG", "RGB"),
        ("PNG", "L"),
        ("PNG", "RGBA"),
        ("PNG", "P"),
        ("JPEG", "RGB"),
        ("JPEG", "L"),
        ("BMP", "RGB"),
        ("BMP", "L"),
        ("BMP", "RGBA"),
        ("GIF", "P"),
        ("GIF", "L"),
    ],
)
def test_every_format_and_mode_decodes_to_rgb_of_the_requested_size(fmt: str, mode: str) -> None:
    out = decode_and_resize(tf.constant(solid(mode, fmt)), 32).numpy()

    assert out.shape == (32, 32, 3)
    assert out.dtype == np.float32
    gray = 0.299 * COLOR[0] + 0.587 * COLOR[1] + 0.114 * COLOR[2]
    expected = np.full(3, gray) if mode == "L" else np.array(COLOR, dtype=float)
    assert np.allclose(out.mean(axis=(0, 1)), expected, atol=4.0)  # JPEG and palettes shift colours slightly


def test_pixels_are_raw_values_not_preprocessed() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")

    out = decode_and_resize(tf.constant(buffer.getvalue()), 32).numpy()

    np.testing.assert_array_equal(out, pixels.astype(np.float32))


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)

    out = decode_and_resize(tf.constant(buffer.getvalue()), 8).numpy()

    assert out.shape == (8, 8, 3)
    assert np.allclose(out.mean(axis=(0, 1)), (255, 0, 0), atol=2)


def two_halves() -> tf.Tensor:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return tf.constant(buffer.getvalue())


def test_box_crops_before_resizing() -> None:
    right = decode_and_resize(two_halves(), 16, tf.constant([22, 0, 40, 20])).numpy()
    left = decode_and_resize(two_halves(), 16, tf.constant([0, 5, 18, 15])).numpy()

    assert np.allclose(right, np.broadcast_to((0, 0, 255), right.shape))
    assert np.allclose(left, np.broadcast_to((255, 0, 0), left.shape))


def test_box_without_area_keeps_the_whole_image_and_overflowing_box_is_clipped() -> None:
    whole = decode_and_resize(two_halves(), 16).numpy()
    zero = decode_and_resize(two_halves(), 16, tf.constant([0, 0, 0, 0])).numpy()
    overflow = decode_and_resize(two_halves(), 16, tf.constant([22, 0, 4000, 3000])).numpy()

    np.testing.assert_array_equal(zero, whole)
    assert np.allclose(overflow, np.broadcast_to((0, 0, 255), overflow.shape))


def test_decode_works_inside_a_traced_serving_function() -> None:
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(images: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(
            lambda x: decode_and_resize(x, 24),
            images,
            fn_output_signature=tf.TensorSpec([24, 24, 3], tf.float32),
        )

    batch = serve(tf.constant([solid("RGB", "PNG"), solid("L", "JPEG"), solid("P", "GIF")])).numpy()

    assert batch.shape == (3, 24, 24, 3)


def test_enlarging_gives_the_antialiased_resize_to_float_rounding() -> None:
    rng = np.random.default_rng(0)
    for height, width, side in ((28, 28, 32), (13, 17, 100), (1, 1, 8)):
        pixels = rng.integers(0, 256, (3, height, width, 3)).astype("uint8")
        smooth = tf.image.resize(pixels, [side, side], method="bilinear", antialias=True).numpy()

        np.testing.assert_allclose(resize_pixels(pixels, side).numpy(), smooth, atol=1e-3)


def test_resize_in_a_graph_of_unknown_shape_equals_the_eager_batch_resize() -> None:
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def one(image: tf.Tensor) -> tf.Tensor:
        return resize_pixels(image, 24)

    rng = np.random.default_rng(1)
    for height, width in ((20, 22), (40, 50), (10, 60)):  # enlarging, shrinking, both
        batch = rng.integers(0, 256, (2, height, width, 3)).astype("uint8")
        eager = resize_pixels(batch, 24).numpy()

        for image, expected in zip(batch, eager, strict=True):
            np.testing.assert_array_equal(one(tf.constant(image)).numpy(), expected)
