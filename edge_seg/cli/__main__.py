"""``python -m edge_seg.cli``: the same as the ``edge-seg`` command."""

from edge_seg.cli.main import main

raise SystemExit(main())
