"""`onebyte peer` whose hash records reach the DHT late: python -m tests.adversaries.late_voter SECONDS <peer args>.

A slow link or a skewed clock, reduced to its effect on agreement: each hash record is held back
for SECONDS and then stored by the peer's own step loop (at its next contribution or hash read),
through the real DHT. Everything else is the real peer.
"""

import sys
import time

from onebyte import cli
from onebyte.dht.client import RecordClient

DELAY = float(sys.argv.pop(1))
_held: list[tuple[float, str, object, float]] = []
_publish_hash, _publish_contributions, _read_hashes = (
    RecordClient.publish_hash,
    RecordClient.publish_contributions,
    RecordClient.read_hashes,
)


def _release(client: RecordClient) -> None:
    for item in [h for h in _held if h[0] <= time.time()]:
        _held.remove(item)
        _publish_hash(client, *item[1:])


def publish_hash(self, run_id, rec, expiration):
    _held.append((time.time() + DELAY, run_id, rec, expiration))
    return True


def publish_contributions(self, run_id, rec, expiration):
    _release(self)
    return _publish_contributions(self, run_id, rec, expiration)


def read_hashes(self, run_id, round_):
    _release(self)
    return _read_hashes(self, run_id, round_)


RecordClient.publish_hash, RecordClient.publish_contributions, RecordClient.read_hashes = (
    publish_hash,
    publish_contributions,
    read_hashes,
)
if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
