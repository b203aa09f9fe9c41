"""``python -m lightning_unlearn.cli`` is the ``lightning-unlearn`` command."""

import sys

from lightning_unlearn.cli import main

sys.exit(main())
