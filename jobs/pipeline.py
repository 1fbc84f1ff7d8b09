"""``ray job submit -- python jobs/pipeline.py [--workdir /data/demo] [--config p.toml] [--set key=value]``

Raw images -> corpus -> DCGAN -> renders -> report.html on the cluster in
``RAY_ADDRESS`` (same arguments as ``genlib pipeline``).
"""

import sys

from genlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
