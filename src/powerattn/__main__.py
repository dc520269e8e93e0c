"""``python -m powerattn``: the same as the ``powerattn`` console command."""

import sys

from .cli import main

sys.exit(main())
