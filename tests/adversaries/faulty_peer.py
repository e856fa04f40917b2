"""`onebyte peer` whose weights get deliberately altered once:
python -m tests.adversaries.faulty_peer ROUND <peer args>.

The fault is injected into onebyte's own step loop (after applying ROUND, one weight moves), the
way a bit flip or a buggy kernel would; everything else, the DHT included, is the real thing.
"""

import logging
import sys

import torch

from onebyte import cli
from onebyte.peer import applier

ALTER_AT = int(sys.argv.pop(1))
_apply = applier.RoundApplier.apply
_altered = []


def altered_apply(self, rs, *, live):
    seconds = _apply(self, rs, live=live)
    if rs.round == ALTER_AT and not _altered:
        _altered.append(rs.round)
        with torch.no_grad():
            self.state.replica.params[0][1].view(-1)[0] += 0.25
        logging.getLogger("onebyte.peer").warning(
            "[%s] round=%d FAULT INJECTED: one weight altered", self.tag, rs.round
        )
    return seconds


applier.RoundApplier.apply = altered_apply
if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
