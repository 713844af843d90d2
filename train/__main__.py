import sys

from . import main
from .cli import stop_on_signals

stop_on_signals()
sys.exit(main())
