"""`python -m metasym_core ...` = the `metasym` command (for machines without the console script)."""

import sys

from metasym_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
