"""`python -m phikit.bench`: the same as `phikit bench`."""

from .cli import main

raise SystemExit(main())
