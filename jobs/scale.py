"""``ray job submit -- python jobs/scale.py --config run.toml --workers 1,2,4,8 --out /shared/scaling``

Same arguments as ``genlib scale``; joins the cluster in ``RAY_ADDRESS``.
"""

import sys

from genlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["scale", *sys.argv[1:]]))
