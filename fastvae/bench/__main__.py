"""``python -m fastvae.bench``: the same as ``fastvae bench``."""
from .cli import main

raise SystemExit(main())
