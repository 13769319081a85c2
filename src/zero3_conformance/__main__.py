"""`python -m zero3_conformance` (as `torchrun ... -m zero3_conformance run` starts each rank)."""

import sys

from .cli import main

sys.exit(main())
