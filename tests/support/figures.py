"""Figures a test reports for RELIABILITY.md: one line `RELIABILITY {json}` on stdout per scenario.

bench/reliability.py runs the hostile, fault and bad-input tests with `-s`, collects these lines
and each test's outcome, and writes RELIABILITY.md. They are output only: no test depends on them.
"""

from __future__ import annotations

import json


def record(scenario: str, **data) -> None:
    print("RELIABILITY " + json.dumps({"scenario": scenario, **data}, default=str, sort_keys=True), flush=True)
