"""``python -m autoconverge``: the same entry point as the ``autoconverge`` script."""

import sys

from autoconverge.cli.main import main

sys.exit(main())
