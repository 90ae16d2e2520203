"""`python -m convert ...`; see `convert/cli.py`."""

import sys

from convert.cli import main

sys.exit(main())
