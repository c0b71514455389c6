"""The ``bitkv`` command line (installed as the import package ``bitkv_cli``).

It uses only bitkv's public API: :func:`bitkv.open`, :class:`bitkv.Store` methods,
:func:`bitkv.check.check` / :func:`bitkv.check.repair`, :mod:`bitkv.crashtest` and the
exceptions of :mod:`bitkv`. Entry point: :func:`bitkv_cli.main.main`.
"""
