"""In-memory splits hold exactly the pixels the serving graph decodes, whichever side decoded them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kubegraft_trainer.dataset import Example
from kubegraft_trainer.images import check_image, decode_and_resize
from kubegraft_trainer.pipeline import ImageLoader, load_arrays_many
from kubegraft_trainer.storage import LocalStorage

_RNG = np.random.default_rng(5)


def _noise(size: tuple[int, int], channels: int) -> np.ndarray[Any, Any]:
    return _RNG.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _palette(size: tuple[int, int], colors: int) -> Image.Image:
    rgb = Image.fromarray(_noise(size, 3))
    return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=colors)


# name -> (encoded bytes, whether the host check decodes it exactly as TensorFlow does)
FILES: dict[str, tuple[bytes, bool]] = {
    "rgb": (_encode(Image.fromarray(_noise((28, 28), 3))), True),
    "gray": (_encode(Image.fromarray(_noise((28, 28), 1)[..., 0])), True),
    "gray-alpha": (_encode(Image.fromarray(_noise((20, 30), 2), "LA")), True),
    "rgba": (_encode(Image.fromarray(_noise((31, 17), 4), "RGBA")), True),
    "one-bit": (_encode(Image.fromarray(_noise((25, 25), 1)[..., 0] > 127)), True),
    "palette": (_encode(_palette((28, 28), 256)), True),
    "palette-4-bit": (_encode(_palette((28, 28), 16), bits=4), True),
    "palette-transparent": (_encode(_palette((28, 28), 64), transparency=3), True),
    "rgb-color-key": (_encode(Image.fromarray(_noise((28, 28), 3)), transparency=(1, 2, 3)), True),
    "larger-than-output": (_encode(Image.fromarray(_noise((90, 60), 3))), True),
    "sixteen-bit": (_encode(Image.fromarray(_RNG.integers(0, 65536, (28, 28), dtype=np.uint16))), False),
    "too-large-to-hold": (_encode(Image.fromarray(_noise((300, 260), 3))), False),
    "jpeg": (_encode(Image.fromarray(_noise((28, 28), 3)), "JPEG"), False),
    "bmp": (_encode(Image.fromarray(_noise((28, 28), 3)), "BMP"), False),
    "gif": (_encode(_palette((28, 28), 32), "GIF"), False),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_host_check_keeps_pixels_only_where_they_equal_tensorflows_decode(name: str) -> None:
    data, exact = FILES[name]

    decodable, pixels = check_image(data, keep_pixels=True)

    assert decodable
    assert (pixels is not None) is exact
    if pixels is not None:
        expected = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
        np.testing.assert_array_equal(pixels, expected)


def test_loaded_splits_equal_the_serving_decode_pixel_for_pixel_and_keep_their_order(tmp_path: Path) -> None:
    names = sorted(FILES)
    for name in names:
        (tmp_path / f"{name}.img").write_bytes(FILES[name][0])
    (tmp_path / "corrupt.img").write_bytes(FILES["rgb"][0][:40])
    examples = [Example(f"{name}.img", label) for label, name in enumerate(names)]
    boxed = Example("rgba.img", 99, (3, 2, 20, 15))  # a crop box: always decoded by TensorFlow
    groups = [examples[:6], [Example("corrupt.img", 98), boxed, *examples[6:]]]

    with ImageLoader(LocalStorage(str(tmp_path)), threads=2) as loader:
        (first, first_labels), (second, second_labels) = load_arrays_many(groups, loader, 24)
        assert loader.skipped == ["corrupt.img"]

    assert list(first_labels) == list(range(6))
    assert list(second_labels) == [99, *range(6, len(names))]
    expected = [decode_and_resize(tf.constant(FILES[n][0]), 24).numpy() for n in names]
    crop = decode_and_resize(tf.constant(FILES["rgba"][0]), 24, tf.constant([3, 2, 20, 15])).numpy()
    np.testing.assert_array_equal(first, np.stack(expected[:6]))
    np.testing.assert_array_equal(second, np.stack([crop, *expected[6:]]))
