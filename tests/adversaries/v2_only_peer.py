"""`onebyte peer` as a peer that speaks protocols 1 and 2 but not 3 (no stateful update rule) would run it:
python -m tests.adversaries.v2_only_peer <peer args>. Everything else is the real peer."""

import sys

from onebyte import cli
from onebyte.coordinator_free import manifest

manifest.SUPPORTED_VERSIONS = (1, 2)

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
