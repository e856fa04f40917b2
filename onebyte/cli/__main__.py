"""``python -m onebyte.cli``: the ``onebyte`` command."""

import sys

from onebyte.cli.main import main

sys.exit(main())
