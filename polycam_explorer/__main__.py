"""``python -m polycam_explorer explain|generate|evaluate|index|serve``: the command line."""
import sys

from .cli import main

sys.exit(main())
