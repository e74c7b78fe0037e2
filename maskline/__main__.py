"""`python -m maskline` is `maskline`."""

import sys

from maskline.cli import main

sys.exit(main())
