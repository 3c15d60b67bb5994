"""Where the client finds its endpoint and credentials.

Each setting is taken from the first of: constructor argument, environment
variable, ``.env`` file (read without touching ``os.environ``, so real
environment variables always win, even empty ones). Two modes follow from the result:

* hosted: an endpoint id is known -> ``{base}/{endpoint_id}/run``, key required;
* local: no endpoint id and a non-default base URL (``python handler.py
  --rp_serve_api``) -> ``{base}/run``, no key needed or sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values, find_dotenv

from .constants import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL, ENV_ENDPOINT_ID
from .errors import ConfigurationError


@dataclass(frozen=True)
class ClientConfig:
    """Resolved settings; the key is left out of ``repr`` so it cannot leak into logs."""

    base_url: str
    endpoint_id: str | None
    api_key: str | None = field(default=None, repr=False)

    @property
    def local(self) -> bool:
        """True for the runpod SDK's local API server (different routes, no auth)."""
        return self.endpoint_id is None

    @property
    def api_root(self) -> str:
        """URL that route names (``run``, ``status/<id>`` ...) are appended to."""
        return self.base_url if self.local else f"{self.base_url}/{self.endpoint_id}"


def resolve_config(
    api_key: str | None = None,
    endpoint_id: str | None = None,
    base_url: str | None = None,
    env_file: str | os.PathLike[str] | None = None,
) -> ClientConfig:
    """Build a ``ClientConfig`` or raise ``ConfigurationError`` naming the missing variable.

    ``env_file`` defaults to the nearest ``.env`` in the working directory or its parents.
    """
    dotenv = _read_env_file(env_file)

    def pick(argument: str | None, name: str) -> str | None:
        # The first source that sets the name decides, even to "": an exported empty
        # variable (or an empty argument) switches a .env value off.
        value: str | None
        if argument is not None:
            value = argument
        elif name in os.environ:
            value = os.environ[name]
        else:
            value = dotenv.get(name)
        return (value or "").strip() or None

    base = (pick(base_url, ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigurationError(f"{ENV_BASE_URL} must start with http:// or https://")
    endpoint = pick(endpoint_id, ENV_ENDPOINT_ID)
    if endpoint is None:
        if base == DEFAULT_BASE_URL:
            raise ConfigurationError(
                f"{ENV_ENDPOINT_ID} is not set: export it or add it to .env "
                f"(or point {ENV_BASE_URL} at a local worker, e.g. http://127.0.0.1:8000)"
            )
        return ClientConfig(base_url=base, endpoint_id=None)
    key = pick(api_key, ENV_API_KEY)
    if key is None:
        raise ConfigurationError(
            f"{ENV_API_KEY} is not set: export it or add it to .env (needed for endpoint {endpoint})"
        )
    return ClientConfig(base_url=base, endpoint_id=endpoint, api_key=key)


def _read_env_file(env_file: str | os.PathLike[str] | None) -> dict[str, str | None]:
    path = Path(env_file) if env_file is not None else _find_env_file()
    if path is None or not path.is_file():
        return {}
    return dict(dotenv_values(path))


def _find_env_file() -> Path | None:
    found = find_dotenv(usecwd=True)
    return Path(found) if found else None
