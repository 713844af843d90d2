"""`python -m probes runs/NAME [--watch] [--only ...] [--steps ...] [--force]`."""
import sys

from .runner import main

sys.exit(main())
