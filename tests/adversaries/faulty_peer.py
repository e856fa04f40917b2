"""`onebyte peer` whose weights get deliberately altered once: python -m tests.adversaries.faulty_peer ROUND <peer args>.

The fault is injected into onebyte's own step loop (after applying ROUND, one weight moves), the
way a bit flip or a buggy kernel would; everything else, the DHT included, is the real thing.
"""

import logging
import sys

import torch

from onebyte.peer import cli, swarm

ALTER_AT = int(sys.argv.pop(1))
_apply_set = swarm.SwarmPeer._apply_set


def altered_apply_set(self, rs, *, replayed=False):
    _apply_set(self, rs, replayed=replayed)
    if rs.round == ALTER_AT and not getattr(self, "_altered", False):
        self._altered = True
        with torch.no_grad():
            self.replica.params[0][1].view(-1)[0] += 0.25
        logging.getLogger("onebyte.peer").warning("[%s] round=%d FAULT INJECTED: one weight altered", self.tag, rs.round)


swarm.SwarmPeer._apply_set = altered_apply_set
if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
