"""Build the embedded stand-in model now, instead of at the worker's first start.

The stand-in (what the worker serves when MODEL_ID is unset) takes ~1-2 min to build
once, then is reused from the cache; this reports where it is and how long it took.

    python -m builder.build_standin
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from medgemma.errors import SettingsError
from medgemma.settings import load_settings
from medgemma.standin import ensure_standin, is_built


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cache = load_settings().standin_cache
    except SettingsError as error:
        sys.exit(f"build_standin: {error}")
    already = is_built(cache)
    started = time.perf_counter()
    path = ensure_standin(cache)
    verb = "already built" if already else "built"
    print(f"build_standin: stand-in {verb} at {path} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
