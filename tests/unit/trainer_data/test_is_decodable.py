"""The host-side image check that keeps corrupt files out of TensorFlow (Pillow on real encoded bytes)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kubegraft_trainer.images import is_decodable


def encode(fmt: str, mode: str = "RGB", size: tuple[int, int] = (20, 12)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
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
        ("GIF", "P"),
        ("WEBP", "RGB"),
    ],
)
def test_complete_images_are_decodable(fmt: str, mode: str) -> None:
    assert is_decodable(encode(fmt, mode))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_truncated_images_are_not_decodable(fmt: str) -> None:
    data = encode(fmt, "P" if fmt == "GIF" else "RGB", size=(64, 64))

    assert not is_decodable(data[: len(data) // 2])


def test_empty_text_and_random_bytes_are_not_decodable() -> None:
    assert not is_decodable(b"")
    assert not is_decodable(b"label,path\ncat,1.png\n")
    assert not is_decodable(np.random.default_rng(1).bytes(4096))


def test_formats_tensorflow_cannot_read_are_refused() -> None:
    assert not is_decodable(encode("TIFF"))
    assert not is_decodable(encode("BMP", "1"))  # 1-bit BMP: TensorFlow's BMP decoder refuses it
