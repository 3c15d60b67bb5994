"""Settings parse from an env mapping and fail loudly, naming the variable."""

from pathlib import Path

import pytest

from medgemma.errors import SettingsError
from medgemma.settings import DEFAULT_MAX_NEW_TOKENS, Settings, load_settings, resolve_model_id


def test_defaults_use_the_standin_and_auto_quantization():
    settings = Settings.from_env({})
    assert settings.uses_standin and settings.model_id is None
    assert settings.quantization is None  # resolved per device: nf4 on CUDA, none on CPU
    assert settings.dtype is None and settings.device == "auto"  # bfloat16 on CUDA, float32 on CPU
    assert settings.dummy_image is True and settings.streaming is False
    assert settings.max_new_tokens == DEFAULT_MAX_NEW_TOKENS


@pytest.mark.parametrize(("value", "expected"), [("true", "nf4"), ("false", "none"), ("1", "nf4"), ("off", "none")])
def test_use_quantization_alias(value, expected):
    assert Settings.from_env({"USE_QUANTIZATION": value}).quantization == expected


def test_quantization_wins_over_the_alias():
    assert Settings.from_env({"QUANTIZATION": "int8", "USE_QUANTIZATION": "true"}).quantization == "int8"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"QUANTIZATION": "fp4"}, "QUANTIZATION"),
        ({"USE_QUANTIZATION": "maybe"}, "USE_QUANTIZATION"),
        ({"DTYPE": "int4"}, "DTYPE"),
        ({"DEVICE": "tpu"}, "DEVICE"),
        ({"MAX_NEW_TOKENS": "lots"}, "MAX_NEW_TOKENS"),
        ({"MAX_NEW_TOKENS": "0"}, "MAX_NEW_TOKENS"),
        ({"MAX_NEW_TOKENS": "4096", "MAX_NEW_TOKENS_CAP": "2048"}, "MAX_NEW_TOKENS_CAP"),
        ({"DUMMY_IMAGE": "sometimes"}, "DUMMY_IMAGE"),
        ({"MAX_CONCURRENCY": "-1"}, "MAX_CONCURRENCY"),
        ({"STREAMING": "y e s"}, "STREAMING"),
    ],
)
def test_bad_values_fail_naming_the_variable(env, names):
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


@pytest.mark.parametrize("dtype", ["float16", "fp16", "half"])
def test_float16_is_refused_with_the_reason(dtype):
    with pytest.raises(SettingsError, match="NaN"):
        Settings.from_env({"DTYPE": dtype})


@pytest.mark.parametrize(("value", "expected"), [("auto", None), ("bfloat16", "bfloat16"), ("FLOAT32", "float32")])
def test_dtype_choices(value, expected):
    assert Settings.from_env({"DTYPE": value}).dtype == expected


def test_hub_ids_pass_through_unchanged():
    assert resolve_model_id("google/medgemma-1.5-4b-it") == "google/medgemma-1.5-4b-it"


def test_model_dir_is_followed_into_its_single_checkpoint_child(tmp_path: Path):
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "config.json").write_text("{}")
    assert resolve_model_id(str(tmp_path)) == str(tmp_path / "snapshot")
    assert Settings.from_env({"MODEL_ID": str(tmp_path)}).model_id == str(tmp_path / "snapshot")


def test_model_dir_with_config_is_used_as_is(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_id(str(tmp_path)) == str(tmp_path)


def test_model_dir_without_a_checkpoint_is_a_boot_error(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    with pytest.raises(SettingsError, match="2 candidate"):
        resolve_model_id(str(tmp_path))
    with pytest.raises(SettingsError, match="not a directory"):
        resolve_model_id(str(tmp_path / "missing"))


def test_dotenv_is_read_but_real_environment_wins(tmp_path: Path, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text("MAX_NEW_TOKENS=99\nDUMMY_IMAGE=false\n")
    monkeypatch.setenv("MAX_NEW_TOKENS", "7")
    # Set, then unset, so monkeypatch records "absent" and removes what load_dotenv writes.
    monkeypatch.setenv("DUMMY_IMAGE", "placeholder")
    monkeypatch.delenv("DUMMY_IMAGE")
    settings = load_settings(dotenv_path=str(dotenv))
    assert settings.max_new_tokens == 7 and settings.dummy_image is False


def test_settings_import_without_heavy_libraries():
    import subprocess
    import sys

    code = (
        "import sys, medgemma.settings, medgemma.request, medgemma.prompts, medgemma.tokens, medgemma.decoding, "
        "medgemma.sources, medgemma.model_access, medgemma.worker, medgemma.engines, medgemma.engines.batching; "
        "print(any(m in sys.modules for m in ('torch', 'transformers')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_static_cache_and_torch_compile_are_exclusive():
    with pytest.raises(SettingsError, match="STATIC_CACHE=true and TORCH_COMPILE=true are exclusive"):
        Settings.from_env({"STATIC_CACHE": "true", "TORCH_COMPILE": "true"})
    assert Settings.from_env({"STATIC_CACHE": "true"}).static_cache
    assert Settings.from_env({"TORCH_COMPILE": "true"}).torch_compile


def test_image_url_settings_default_to_https_only_with_the_ssrf_rules_on():
    settings = Settings.from_env({})
    assert settings.image_url_allow_http is False
    assert settings.image_url_ca_bundle is None and settings.image_url_allow_addresses == ()
    assert settings.image_url_timeout_s == 10.0 and settings.image_url_deadline_s == 30.0


def test_image_url_settings_parse(tmp_path: Path):
    import trustme

    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    settings = Settings.from_env(
        {
            "IMAGE_URL_ALLOW_HTTP": "true",
            "IMAGE_URL_CA_BUNDLE": str(bundle),
            "IMAGE_URL_ALLOW_ADDRESSES": "127.0.0.1, ::1,10.1.0.0/16",
            "IMAGE_URL_TIMEOUT_S": "0.5",
            "IMAGE_URL_DEADLINE_S": "2",
        }
    )
    assert settings.image_url_allow_http is True and settings.image_url_ca_bundle == bundle
    assert [str(network) for network in settings.image_url_allow_addresses] == [
        "127.0.0.1/32",
        "::1/128",
        "10.1.0.0/16",
    ]
    assert (settings.image_url_timeout_s, settings.image_url_deadline_s) == (0.5, 2.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGE_URL_ALLOW_HTTP", "sometimes"),
        ("IMAGE_URL_CA_BUNDLE", "/nonexistent/ca.pem"),
        ("IMAGE_URL_CA_BUNDLE", __file__),  # a file, but no PEM certificate in it
        ("IMAGE_URL_ALLOW_ADDRESSES", "localhost"),
        ("IMAGE_URL_ALLOW_ADDRESSES", "10.0.0.1/8"),  # host bits set: a typo, not a network
        ("IMAGE_URL_TIMEOUT_S", "0"),
        ("IMAGE_URL_TIMEOUT_S", "soon"),
        ("IMAGE_URL_DEADLINE_S", "nan"),
    ],
)
def test_bad_image_url_settings_fail_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("value", ["", "standin", "  standin "])
def test_model_id_standin_or_empty_means_the_embedded_standin(value):
    assert Settings.from_env({"MODEL_ID": value}).uses_standin
