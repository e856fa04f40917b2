"""docs/PROTOCOL.md's test vectors are what the code computes (spec and code cannot drift)."""

import json
import pathlib
import re

from onebyte.spec.vectors import compute_v3_vectors, compute_vectors

PROTOCOL = pathlib.Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def documented_vectors(tag: str = "vectors") -> dict:
    text = PROTOCOL.read_text()
    m = re.search(rf"<!-- {tag}:begin -->\s*```json\n(.*?)```\s*<!-- {tag}:end -->", text, re.S)
    assert m, f"docs/PROTOCOL.md has no {tag} block"
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


def test_code_matches_the_v3_vectors():
    doc, code = documented_vectors("vectors-v3"), compute_v3_vectors()
    assert doc == code
    # the binary32 patterns of the constants are the published ones (0.9f, 0.99f, 1e-8f, 0.01f)
    assert doc["binary32_bits"] == {"lr": "3c23d70a", "beta1": "3f666666", "beta2": "3f7d70a4", "optim_eps": "322bcc77"}
    for case in ("adam_dense_float32", "nesterov_dense_float32"):
        hashes = doc[case]["sha256_after_each_round"]
        assert hashes[1] == hashes[2] != hashes[3] and doc[case]["step"] == 2  # the empty round changes nothing


def test_code_matches_the_admission_vectors():
    """§15's admission by seniority: the documented rounds are what the code decides, and they show
    what the rule is for (the established keys kept, the saturated keys without standing, new keys
    limited, the honest newcomer before the saturated ones)."""
    from onebyte.spec.vectors import compute_admission_vectors

    doc = documented_vectors("vectors-admission")
    assert doc == compute_admission_vectors()
    key = doc["keys"]
    assert doc["round2"]["seniority"] == {key[0]: 2, key[1]: 2, key[3]: 1}
    assert key[2] not in doc["round1"]["in_good_standing"] and key[2] in doc["round1"]["kept"]
    assert {key[0], key[1], key[3], key[6]} <= set(doc["round2"]["kept"]) and len(doc["round2"]["kept"]) == 5
    assert doc["round2"]["rejected"] == {"new_key_limit": 3}
