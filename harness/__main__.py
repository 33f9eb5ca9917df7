"""`python -m harness` is the `tapmig` command, for environments without its script."""

import sys

from harness.cli.main import main

sys.exit(main())
