"""``python -m loopwatch``: see :mod:`loopwatch.cli`."""

import sys

from loopwatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
