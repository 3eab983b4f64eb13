"""``python -m fastvae``: the same commands as the ``fastvae`` console script."""
import sys

from .cli import main

sys.exit(main())
