"""`python -m relay` is `maskline`."""

import sys

from relay.cli import main

sys.exit(main())
