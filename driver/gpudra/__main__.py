"""``python -m gpudra`` is the ``gpudra`` command."""

import sys

from gpudra.cli import main

sys.exit(main())
