"""`python -m probes runs/NAME [--watch] [--only ...] [--steps ...] [--force]`."""
import sys

from probes.run.cli import main

if __name__ == "__main__":  # guarded: worker processes re-import this module
    sys.exit(main())
