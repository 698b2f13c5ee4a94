"""``python -m pixelwise.cli``: the same as ``pixelwise`` and ``python -m pixelwise``."""

import sys

from . import main

sys.exit(main())
