"""The ``edge-seg`` command line: the entry point and its subcommand parsers; the work is in the other wings."""
