"""``python -m larsvae`` == the ``larsvae`` command (see :mod:`larsvae.cli`)."""

from larsvae.cli import main

raise SystemExit(main())
