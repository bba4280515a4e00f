"""``python -m fsjax ...``: the ``fsjax`` command line (:func:`fsjax.cli.main`)."""

import sys

from fsjax.cli import main

if __name__ == "__main__":
    sys.exit(main())
