"""``python -m cued.daemon.cli``: the ``cued`` command."""

from cued.daemon.cli.main import main

raise SystemExit(main())
