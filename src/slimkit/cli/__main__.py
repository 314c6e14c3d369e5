"""``python -m slimkit.cli ...`` (e.g. under ``torchrun -m slimkit.cli train ...``)."""

import sys

from slimkit.cli import main

sys.exit(main())
