"""``python -m bitkv.server``: the same server as ``bitkv serve`` (options: --help)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from bitkv_cli.serve import serve

    serve.main(args=argv, prog_name="python -m bitkv.server")


if __name__ == "__main__":
    main(sys.argv[1:])
