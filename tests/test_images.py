"""Untrusted images: base64 or data URLs in, RGB out; junk, oversize and bombs rejected."""

import base64
import io

import pytest
from PIL import Image

from medgemma.errors import InputError
from medgemma.images import DUMMY_IMAGE_SIZE, create_dummy_image, decode_image, encode_image

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 1_000_000}


def _png(size=(32, 24), mode="RGBA") -> str:
    return encode_image(Image.new(mode, size, (10, 20, 30, 255) if mode == "RGBA" else 128))


def test_base64_and_data_url_decode_to_rgb():
    for value in (_png(), "data:image/png;base64," + _png()):
        image = decode_image(value, "image", **LIMITS)
        assert image.mode == "RGB" and image.size == (32, 24)


def test_grayscale_jpeg_is_converted_to_rgb():
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buffer, format="JPEG")
    image = decode_image(base64.b64encode(buffer.getvalue()).decode(), "image", **LIMITS)
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (123, "image: must be a base64 string"),
        ("not base64 at all!", "image: is not valid base64"),
        (base64.b64encode(b"%PDF-1.4 not an image").decode(), "image: is not a readable image"),
        ("data:text/plain;base64,aGVsbG8=", "image: data URL must be"),
        ("", "image: is empty"),
    ],
)
def test_bad_images_name_the_field(value, message):
    with pytest.raises(InputError, match=message):
        decode_image(value, "image", **LIMITS)


def test_oversize_payload_is_refused_before_decoding():
    with pytest.raises(InputError, match="larger than the limit of 1000 bytes"):
        decode_image(_png((200, 200), "RGB") + "A" * 4000, "images[2]", max_bytes=1000, max_pixels=10**9)


def test_decompression_bomb_is_refused_on_its_header():
    # A tiny file that claims 10000x10000 pixels: refused without being decoded.
    bomb = encode_image(Image.new("1", (10_000, 10_000)))
    assert len(bomb) < 100_000
    with pytest.raises(InputError, match="10000x10000 pixels, over the limit of 1000000"):
        decode_image(bomb, "image", **LIMITS)


def test_dummy_image_is_white_rgb_at_native_size():
    image = create_dummy_image()
    assert image.mode == "RGB" and image.size == (DUMMY_IMAGE_SIZE, DUMMY_IMAGE_SIZE)
    assert image.getextrema() == ((255, 255), (255, 255), (255, 255))
