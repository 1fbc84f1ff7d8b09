"""``ray job submit -- python jobs/train.py --config run.toml [--set key=value ...]``

Same arguments as ``genlib train``; joins the cluster in ``RAY_ADDRESS``.
"""

import sys

from genlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
