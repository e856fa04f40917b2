"""docs/PROTOCOL.md's test vectors are what the code computes (spec and code cannot drift)."""

import json
import pathlib
import re

from onebyte.spec.vectors import compute_vectors

PROTOCOL = pathlib.Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def documented_vectors() -> dict:
    text = PROTOCOL.read_text()
    m = re.search(r"<!-- vectors:begin -->\s*```json\n(.*?)```\s*<!-- vectors:end -->", text, re.S)
    assert m, "docs/PROTOCOL.md has no vectors block"
    return json.loads(m.group(1))


def test_code_matches_every_documented_vector():
    doc, code = documented_vectors(), compute_vectors()
    assert set(doc) == set(code)
    for key in doc:
        assert doc[key] == code[key], key


def test_vectors_pin_known_external_values():
    doc = documented_vectors()
    # SplitMix64 seeded with 0 is a published stream; bytes 0x41/0xC5 decode to +1 and -sqrt(2)
    assert doc["splitmix64_seed0_first3"][0] == "e220a8397b1dcdaf"
    assert float.fromhex(doc["codec_decode_hex"]["0x41"]) == 1.0
    assert abs(float.fromhex(doc["codec_decode_hex"]["0xc5"]) + 2**0.5) < 1e-7
