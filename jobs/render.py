"""``ray job submit -- python jobs/render.py --requests R.parquet --config render.toml [--set ...]``

Same arguments as ``genlib render``; joins the cluster in ``RAY_ADDRESS``.
"""

import sys

from genlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["render", *sys.argv[1:]]))
