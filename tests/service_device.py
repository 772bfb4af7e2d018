"""``edge-seg`` with a source the test can stall: while the file ``$EDGE_SEG_TEST_GATE`` exists, reads give nothing
(a camera that is down); while ``$EDGE_SEG_TEST_WEDGE`` exists, a read does not return (a driver that hangs).

Everything else is the real CLI (``edge-seg run --config …``), so the test sees the service's real sd_notify
traffic. Run as a subprocess: ``python tests/service_device.py run --config cfg.yaml``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from edge_seg import sources
from edge_seg.cli.main import main

GATE = Path(os.environ["EDGE_SEG_TEST_GATE"])
WEDGE = Path(os.environ.get("EDGE_SEG_TEST_WEDGE", os.devnull + ".absent"))
_open = sources.open_source


class GatedSource:
    def __init__(self, inner):
        self.inner, self.uri = inner, inner.uri

    def read(self, timeout: float):
        while WEDGE.exists():
            time.sleep(0.05)
        if GATE.exists():
            time.sleep(timeout)
            return None
        return self.inner.read(timeout)

    def close(self) -> None:
        self.inner.close()


sources.open_source = lambda uri, **options: GatedSource(_open(uri, **options))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
