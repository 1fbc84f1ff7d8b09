"""``ray job submit -- python jobs/build.py INPUT --recipe R --out DIR [--ray] ...``

Same arguments as ``genlib data build``; on a cluster pass ``--ray`` so the
per-image work runs as Ray tasks on every node.
"""

import sys

from genlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "build", *sys.argv[1:]]))
