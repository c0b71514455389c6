"""``python -m bitkv_cli``: the same as the ``bitkv`` command."""

import sys

from bitkv_cli.main import main

sys.exit(main())
