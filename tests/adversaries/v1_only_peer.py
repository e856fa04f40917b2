"""`onebyte peer` as a peer that only speaks protocol v1 (dense directions) would run it:
python -m tests.adversaries.v1_only_peer <peer args>. Everything else is the real peer."""

import sys

from onebyte import cli
from onebyte.coordinator_free import manifest

manifest.SUPPORTED_VERSIONS = (1,)
manifest.SUPPORTED_DIRECTIONS = ("dense",)

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
