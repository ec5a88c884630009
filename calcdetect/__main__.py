"""``python -m calcdetect``: the same as the ``calcdetect`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    sys.exit(main())
