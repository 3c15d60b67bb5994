"""``python -m client`` from the checkout (``python -m medgemma_client`` where installed)."""

import sys

from .cli import main

sys.exit(main(prog=f"python -m {__package__}"))
