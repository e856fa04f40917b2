"""onebyte with one deliberate misbehaviour: python -m tests.adversaries.hostile_peer MODE PARAM <onebyte args>.

Like tests/adversaries/faulty_peer.py, the fault goes into onebyte's own code (its codec, its clock, its
estimate, its loss) and everything else, the DHT included, is the real thing:

  extreme against|with  every contribution is the largest byte the codec has (g_max), with the
                        sign against the estimate (gradient ascent at full strength) or with it
  skew SECONDS          this machine's clock is SECONDS ahead (negative: behind), for everything
                        in the process (onebyte's rounds and hivemind's DHT time alike)
  slow SECONDS          every contribution after the first few takes SECONDS longer (an
                        overloaded or throttled machine), so it misses deadlines
  nonfinite EVERY       every EVERY-th estimate sees a non-finite loss (NaN, +inf, -inf in turn)
"""

import sys
import time

MODE, PARAM = sys.argv.pop(1), sys.argv.pop(1)

if MODE == "skew":  # before anything reads the clock or binds time.time
    _real_time = time.time
    _skew = float(PARAM)
    time.time = lambda: _real_time() + _skew

import logging  # noqa: E402

import torch  # noqa: E402

from onebyte import cli  # noqa: E402
from onebyte.peer import replica  # noqa: E402
from onebyte.tasks import data  # noqa: E402

log = logging.getLogger("onebyte.peer")

if MODE == "extreme":
    _against = PARAM == "against"

    def extreme_encode(self, g):
        if g != g or g in (float("inf"), float("-inf")):
            return None
        top = self.codec.encode(self.codec.max_value)  # the largest magnitude, positive sign
        negative = (g > 0) if _against else (g < 0)
        return top | 0x80 if negative else top

    replica.Replica.encode = extreme_encode
elif MODE == "slow":
    _delay = float(PARAM)
    _estimate = replica.Replica.estimate
    _calls = [0]

    def slow_estimate(self, seed, loss_fn):
        _calls[0] += 1
        if _calls[0] > 3:  # the warm-up and the first contributions are quick, so it starts contributing
            time.sleep(_delay)
        return _estimate(self, seed, loss_fn)

    replica.Replica.estimate = slow_estimate
elif MODE == "nonfinite":
    _every = int(PARAM)
    _loss_calls = [0]
    _bad = (float("nan"), float("inf"), float("-inf"))

    def _wrap(loss):
        def bad_loss(self, model, batch):
            out = loss(self, model, batch)
            estimate = _loss_calls[0] // 2  # an estimate evaluates the loss twice (L+ and L-)
            _loss_calls[0] += 1
            if estimate % _every == _every - 1:
                return out + torch.tensor(_bad[(estimate // _every) % 3], dtype=out.dtype)
            return out

        return bad_loss

    data.ClassificationTask.loss = _wrap(data.ClassificationTask.loss)
    data.LMTask.loss = _wrap(data.LMTask.loss)
elif MODE != "skew":
    raise SystemExit(f"unknown mode {MODE!r}")

log.warning("HOSTILE PEER: %s %s", MODE, PARAM)

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
