"""Untrusted images: base64 or data URLs in, RGB out; junk, oversize and bombs rejected.

A job's images share one budget of pixels (MAX_JOB_PIXELS), checked on each header
before the image is decoded.
"""

import base64
import io

import pytest
from PIL import Image, ImageFile

from medgemma.errors import InputError
from medgemma.images import DUMMY_IMAGE_SIZE, ImageBudget, create_dummy_image, encode_image, load_image
from medgemma.request import parse_job_input
from medgemma.settings import Settings

LIMITS = {"MAX_IMAGE_BYTES": "1000000", "MAX_IMAGE_PIXELS": "1000000"}
#: Small pixel limits, so that a job over its budget is a few MB of decoding, not hundreds.
JOB_LIMITS = {"MAX_IMAGE_PIXELS": "4000000", "MAX_JOB_PIXELS": "10000000"}


def _png(size=(32, 24), mode="RGBA") -> str:
    return encode_image(Image.new(mode, size, (10, 20, 30, 255) if mode == "RGBA" else 128))


def load(value: object, field: str = "image", **env: str) -> Image.Image:
    """``load_image`` with a fresh budget under ``LIMITS`` and ``env``."""
    return load_image(value, field, ImageBudget(Settings.from_env({**LIMITS, **env})))


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image PIL decodes (``ImageFile.load``, which PNG and JPEG use; once per image)."""
    sizes: list[tuple[int, int]] = []
    opened: list[ImageFile.ImageFile] = []  # held, so that no id is reused
    real = ImageFile.ImageFile.load

    def load(self):
        if not any(image is self for image in opened):  # convert() calls load() again on a loaded image
            opened.append(self)
            sizes.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


def test_base64_and_data_url_decode_to_rgb():
    for value in (_png(), "data:image/png;base64," + _png()):
        image = load(value)
        assert image.mode == "RGB" and image.size == (32, 24)


def test_grayscale_jpeg_is_converted_to_rgb():
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buffer, format="JPEG")
    image = load(base64.b64encode(buffer.getvalue()).decode())
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
        load(value)


def test_oversize_payload_is_refused_before_decoding():
    with pytest.raises(InputError, match="larger than the limit of 1000 bytes"):
        load(_png((200, 200), "RGB") + "A" * 4000, "images[2]", MAX_IMAGE_BYTES="1000", MAX_IMAGE_PIXELS="10000000")


def test_decompression_bomb_is_refused_on_its_header(decoded):
    # A tiny file that claims 10000x10000 pixels: refused without being decoded.
    bomb = encode_image(Image.new("1", (10_000, 10_000)))
    assert len(bomb) < 100_000
    with pytest.raises(InputError, match="10000x10000 pixels, over the limit of 1000000"):
        load(bomb)
    assert decoded == []


def test_dummy_image_is_white_rgb_at_native_size():
    image = create_dummy_image()
    assert image.mode == "RGB" and image.size == (DUMMY_IMAGE_SIZE, DUMMY_IMAGE_SIZE)
    assert image.getextrema() == ((255, 255), (255, 255), (255, 255))


# ---- all of a job's images together -------------------------------------------------------

#: 4 M pixels each (12 MB of RGB decoded) in about 1.5 KB of base64: three are over 10 M.
BIG = encode_image(Image.new("1", (2000, 2000)))


def test_images_over_the_job_pixel_budget_are_refused_before_decoding(decoded):
    settings = Settings.from_env(JOB_LIMITS)
    assert len(BIG) < 4000
    with pytest.raises(InputError) as caught:
        parse_job_input({"text": "Compare.", "images": [BIG] * 4}, settings)
    assert str(caught.value) == (
        "images[2]: image is 2000x2000 pixels, which takes the job's images to 12000000 pixels, "
        "over the limit of 10000000 pixels for all of them together"
    )
    assert decoded == [(2000, 2000)] * 2  # the third was refused on its header, the fourth never opened


def test_a_conversation_s_images_share_the_budget(decoded):
    settings = Settings.from_env(JOB_LIMITS)
    parts = [{"type": "image", "image": BIG}, {"type": "text", "text": "and"}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": "Two so far."}]
    messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": BIG}}] * 2})
    with pytest.raises(InputError, match=r"^messages\[2\]\.content\[1\]\.image_url: .*over the limit of 10000000"):
        parse_job_input({"messages": messages}, settings)
    assert len(decoded) == 2


def test_the_budget_is_each_job_s_own(decoded):
    settings = Settings.from_env(JOB_LIMITS)
    for _ in range(3):  # two images a job, three jobs: 24 M pixels in all, 8 M per job
        assert len(parse_job_input({"text": "Compare.", "images": [BIG] * 2}, settings).images) == 2
    assert len(decoded) == 6


def test_one_image_over_its_own_limit_names_the_image_limit():
    with pytest.raises(InputError, match=r"^images\[0\]: image is 2000x2000 pixels, over the limit of 3999999 pixels$"):
        parse_job_input(
            {"text": "x", "images": [BIG]}, Settings.from_env({**JOB_LIMITS, "MAX_IMAGE_PIXELS": "3999999"})
        )
