"""docs/PROTOCOL.md's byte layouts, built by hand from the spec's words (spec and code cannot drift).

Each test packs a record the way §10.1 describes it, with the small msgpack writer below (written
from the msgpack format, not from this project's code), then checks that the project writes exactly
those bytes and accepts them, and that it refuses the near misses the spec says it refuses. No
network, no SmolLM2: a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import re
import struct
from collections import Counter

import msgpack
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer

from onebyte.coordinator_free.agreement import decide_round
from onebyte.coordinator_free.manifest import RunManifest, tied_names
from onebyte.coordinator_free.seedlog import SeedLogError, entry_line, parse_line, replay_set
from onebyte.dht import records as R
from onebyte.dht.identity import Identity
from onebyte.dht.validator import Ed25519OwnerValidator, owner_subkey
from onebyte.zo.codec import ByteCodec, make_codec
from onebyte.zo.noise import contribution_seed

PROTOCOL = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()


# -- a msgpack writer from the format's words: shortest integers, float 64, str, bin, array, map ----
def mp(o) -> bytes:
    if o is None:
        return b"\xc0"
    if o is True or o is False:
        return b"\xc3" if o else b"\xc2"
    if isinstance(o, int):
        if 0 <= o < 128:
            return bytes([o])
        if -32 <= o < 0:
            return struct.pack("b", o)
        if o > 0:
            for tag, fmt, top in (
                (0xCC, ">B", 1 << 8),
                (0xCD, ">H", 1 << 16),
                (0xCE, ">I", 1 << 32),
                (0xCF, ">Q", 1 << 64),
            ):
                if o < top:
                    return bytes([tag]) + struct.pack(fmt, o)
        for tag, fmt, bits in ((0xD0, ">b", 8), (0xD1, ">h", 16), (0xD2, ">i", 32), (0xD3, ">q", 64)):
            if o >= -(1 << (bits - 1)):
                return bytes([tag]) + struct.pack(fmt, o)
        raise ValueError(o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)
    if isinstance(o, str):
        b = o.encode("utf-8")
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        return (b"\xd9" + struct.pack(">B", len(b)) if len(b) < 256 else b"\xda" + struct.pack(">H", len(b))) + b
    if isinstance(o, bytes):
        return (b"\xc4" + struct.pack(">B", len(o)) if len(o) < 256 else b"\xc5" + struct.pack(">H", len(o))) + o
    if isinstance(o, list):
        head = bytes([0x90 | len(o)]) if len(o) < 16 else b"\xdc" + struct.pack(">H", len(o))
        return head + b"".join(mp(x) for x in o)
    if isinstance(o, dict):
        head = bytes([0x80 | len(o)]) if len(o) < 16 else b"\xde" + struct.pack(">H", len(o))
        return head + b"".join(mp(k) + mp(v) for k, v in o.items())
    raise TypeError(type(o))


def spec_hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def parse_one(parse, value):
    """The project's reader on one subkey's value: the parsed record, or None if it was refused."""
    reasons: Counter = Counter()
    out = R.parse_subkeys({owner_subkey(b"\x07" * 32): value}, parse, reasons)
    return out.get((b"\x07" * 32).hex())


# -- §10.1: key id, subkey, signature framing -----------------------------------------------------
def test_key_id_is_sha1_of_the_packed_key_string():
    key = R.round_key("demo", 3)
    assert key == "onebyte/v1/demo/round/3"
    packed = b"\xb7" + key.encode()  # "b7 followed by its 23 bytes"
    assert MSGPackSerializer.dumps(key) == packed
    k = hashlib.sha1(packed).digest()
    assert k == DHTID.generate(source=key).to_bytes()
    assert k.hex() == re.search(r"`K = ([0-9a-f]{40})`", PROTOCOL).group(1)
    assert [R.manifest_key("r"), R.hash_key("r", 0), R.peers_key("r"), R.RUNS_KEY] == [
        "onebyte/v1/r/manifest",
        "onebyte/v1/r/hash/0",
        "onebyte/v1/r/peers",
        "onebyte/v1/runs",
    ]


def test_subkey_and_signature_framing():
    ident = Identity()
    pk = ident.public_key
    assert len(pk) == 32 and ident.peer_id == pk.hex()
    s = MSGPackSerializer.dumps(owner_subkey(pk))
    assert s == b"\xc4\x23" + b"ob1" + pk == spec_hex("c4 23 6f 62 31") + pk
    key = R.round_key("demo", 3)
    k = hashlib.sha1(mp(key)).digest()
    value = mp([1, 3, 1700000000.5, b"\x41\xc5"])
    expiration = 1700021600.25
    message = (
        b"onebyte/record/v1"
        + struct.pack("<I", 20)
        + k
        + struct.pack("<I", 37)
        + s
        + struct.pack("<d", expiration)
        + value
    )
    by_hand = value + ident.sign(message)  # the 64 signature bytes appended raw: Ed25519 is deterministic
    validator = Ed25519OwnerValidator(ident)
    record = DHTRecord(k, s, value, expiration)  # what hivemind's store hands the validator
    assert validator.sign_value(record) == by_hand
    assert validator.validate(DHTRecord(k, s, by_hand, expiration))
    assert validator.strip_value(DHTRecord(k, s, by_hand, expiration)) == value
    for forged in (
        DHTRecord(k, s, by_hand, expiration + 1),  # re-dated
        DHTRecord(hashlib.sha1(mp(R.round_key("demo", 4))).digest(), s, by_hand, expiration),  # moved
        DHTRecord(k, s, value[:-1] + b"\xc6" + by_hand[len(value) :], expiration),
    ):  # altered
        assert not validator.validate(forged)
    assert b"[owner:" not in by_hand + s + k  # no RSASignatureValidator markers anywhere


# -- §10.1: record layouts -----------------------------------------------------------------------
def test_contribution_record_bytes():
    rec = R.ContributionRecord(round=3, published_at=1700000000.5, codes=b"\x41\xc5")
    by_hand = mp([1, 3, 1700000000.5, b"\x41\xc5"])
    documented = re.search(r"codes `41 c5` is the 16 bytes\s+`([0-9a-f ]+)`", PROTOCOL).group(1)
    assert by_hand == spec_hex(documented) == MSGPackSerializer.dumps(rec.pack())
    assert parse_one(R.ContributionRecord.unpack, msgpack.unpackb(by_hand)) == rec
    assert (
        parse_one(R.ContributionRecord.unpack, [1, 3, 1700000000, b"A"]).published_at == 1700000000.0
    )  # an integer is accepted
    refused = [
        [True, 3, 1.5, b"A"],
        [1.0, 3, 1.5, b"A"],
        [2, 3, 1.5, b"A"],  # the format marker is the integer 1
        (1, 3, 1.5, b"A"),  # hivemind's tuple extension type is not an array
        [1, 3.0, 1.5, b"A"],
        [1, True, 1.5, b"A"],
        [1, -1, 1.5, b"A"],  # the round is an integer >= 0
        [1, 3, True, b"A"],
        [1, 3, math.inf, b"A"],
        [1, 3, 1.5, "A"],  # published_at a finite number, codes a bin
        [1, 3, 1.5, b"A", 0],
        {"round": 3, "published_at": 1.5, "codes": b"A"},
        [1, 3, 1.5, b"\x41" * 8165],  # oversized: more than 8164 code bytes
    ]
    for value in refused:
        assert parse_one(R.ContributionRecord.unpack, value) is None, value
    assert parse_one(R.ContributionRecord.unpack, [1, 3, 1.5, b"\x41" * 8164]) is not None


def test_hash_record_bytes():
    sha, digest = "ab" * 32, "cd" * 32
    by_hand = mp({"round": 40, "sha256": sha, "set_digest": digest, "contributions": 7})
    rec = R.HashRecord(round=40, sha256=sha, set_digest=digest, contributions=7)
    assert MSGPackSerializer.dumps(rec.model_dump()) == by_hand
    assert by_hand[:1] == b"\x84" and by_hand[1:7] == b"\xa5round"
    parse = lambda v: R.HashRecord(**v)  # noqa: E731 - what RecordClient.read_hashes uses
    assert parse_one(parse, msgpack.unpackb(by_hand)) == rec
    for bad in (
        {"sha256": sha.upper()},
        {"set_digest": digest[:63]},
        {"round": 40.0},
        {"contributions": True},
        {"extra": 1},
    ):
        assert parse_one(parse, {**rec.model_dump(), **bad}) is None, bad
    assert (
        parse_one(parse, {k: v for k, v in rec.model_dump().items() if k != "contributions"}) is None
    )  # every key is required


def test_heartbeat_and_announcement_bytes():
    hb = {
        "version": "0.1.0",
        "round": -1,
        "sha256": "",
        "made": 0,
        "rate": 0.25,
        "name": "",
        "p2p_id": "12D3KooW",
        "p2p_addrs": ["/ip4/10.0.0.1/tcp/31337"],
    }
    rec = R.Heartbeat(**hb)
    assert MSGPackSerializer.dumps(rec.model_dump()) == mp(hb)
    parse = lambda v: R.Heartbeat(**v)  # noqa: E731
    short = {k: hb[k] for k in ("version", "round", "sha256", "made", "rate")}  # the last three may be missing
    assert parse_one(parse, short) == R.Heartbeat(**short) and parse_one(parse, short).p2p_addrs == []
    assert parse_one(parse, {**short, "rate": 1}).rate == 1.0
    for bad in (
        {"round": -2},
        {"p2p_addrs": ["x"] * 5},
        {"p2p_addrs": ["x" * 129]},
        {"version": "v" * 33},
        {"extra": 0},
    ):
        assert parse_one(parse, {**hb, **bad}) is None, bad
    ann = {"run_id": "demo", "model": "smollm2-135m", "task": "drugreview", "round": 12, "protocol_version": 1}
    assert MSGPackSerializer.dumps(R.RunAnnouncement(**ann).model_dump()) == mp(ann)
    assert parse_one(lambda v: R.RunAnnouncement(**v), msgpack.unpackb(mp(ann))) == R.RunAnnouncement(**ann)


# -- §11: the manifest's fields ---------------------------------------------------------------------
def documented_manifest_fields() -> dict[str, str]:
    block = re.search(r"<!-- manifest-fields:begin -->(.*?)<!-- manifest-fields:end -->", PROTOCOL, re.S)
    assert block, "docs/PROTOCOL.md §11 has no manifest-fields table"
    rows = re.findall(r"^\| `([a-z_0-9]+)` \| [^|]+ \| (`[^`]*`|—) \|", block.group(1), re.M)
    return dict(rows)


def test_every_manifest_field_is_documented_with_its_default():
    doc = documented_manifest_fields()
    fields = list(RunManifest.model_fields)
    assert fields == [f for f in doc if f in fields], (
        "§11's table lists the fields in the order they are written (RunManifest's order)"
    )
    for name, field in RunManifest.model_fields.items():
        assert name in doc, (
            f"RunManifest.{name} is not in docs/PROTOCOL.md §11's table: document it (type, default, meaning)"
        )
        if field.is_required():
            assert doc[name] == "—", f"§11 gives {name} a default, the code requires it"
        else:
            default = field.default_factory() if field.default_factory is not None else field.default
            assert doc[name] != "—" and json.loads(doc[name].strip("`")) == default, f"§11's default for {name}"


def test_a_manifest_written_from_the_table_parses():
    required = {
        "run_id": "demo",
        "created_at": 1.7e9,
        "start_time": 1.7e9 + 10,
        "round_seconds": 30.0,
        "publish_margin": 4.5,
        "settle_seconds": 6.0,
        "hash_every": 2,
        "model": "tiny-llama",
        "initial_sha256": "0" * 64,
        "dataset": "drugreview",
        "max_length": 64,
        "lr": 1e-4,
        "eps": 1e-3,
        "weight_decay": 0.0,
        "table_log2": 25,
        "contribs_per_round": 4,
    }
    assert {n for n, d in documented_manifest_fields().items() if d == "—"} == set(required)
    m = RunManifest(**msgpack.unpackb(mp(required)))
    assert (m.protocol_version, m.codec, m.ties, m.table_key) == (
        1,
        "log8:-8:8",
        None,
        0,
    )  # an old manifest, without ties
    with_ties = RunManifest(
        **msgpack.unpackb(mp({**required, "ties": {"lm_head.weight": ["model.embed_tokens.weight"]}}))
    )
    assert with_ties.ties == {"lm_head.weight": ["model.embed_tokens.weight"]}
    with pytest.raises(ValueError):
        RunManifest(**{**required, "unknown_field": 1})


def test_ties_name_the_other_names_of_a_trainable_tensor():
    try:
        from onebyte.tasks.loaded_model import trainable_parameters
        from onebyte.tasks.loading import load_model
    except ImportError:  # before the move to onebyte.tasks
        from onebyte.peer.models import load_model, trainable_parameters

    model = load_model("tiny-llama").model
    for pattern, expect in (
        (None, {"lm_head.weight": ["model.embed_tokens.weight"]}),
        ("embed", {"model.embed_tokens.weight": ["lm_head.weight"]}),
        (r"layers\.0\.", {}),
    ):
        names = [n for n, _ in trainable_parameters(model, pattern)]
        assert tied_names(model.named_parameters(remove_duplicate=False), names) == expect, pattern
    assert '{"lm_head.weight": ["model.embed_tokens.weight"]}' in PROTOCOL


# -- §12, §14: set digest and seed-log lines ---------------------------------------------------------
def test_set_digest_hashes_raw_keys_and_an_empty_round_line():
    a, b = "01" * 32, "ff" * 32
    recs = {
        b: R.ContributionRecord(round=9, published_at=0.0, codes=b"\x90"),
        a: R.ContributionRecord(round=9, published_at=0.0, codes=b"\x41\xc5"),
    }
    by_hand = hashlib.sha256(
        b"onebyte/set/v1"
        + struct.pack("<Q", 9)
        + bytes.fromhex(a)
        + struct.pack("<I", 2)
        + b"\x41\xc5"
        + bytes.fromhex(b)
        + struct.pack("<I", 1)
        + b"\x90"
    ).hexdigest()
    rs = decide_round("demo", 9, recs, close_time=math.inf, contribs_per_round=4, codec=ByteCodec())
    assert rs.digest == by_hand
    assert rs.contributions[0][0] == contribution_seed("demo", a, 9, 0)  # seeds use the hex string
    line = f'{{"round":9,"digest":"{by_hand}","records":[["{a}","41c5"],["{b}","90"]]}}\n'.encode()
    assert entry_line(9, rs.digest, rs.records) == line
    assert replay_set("demo", line, contribs_per_round=4, codec=ByteCodec()).contributions == rs.contributions
    for bad in (
        line.replace(b"ffff", b"FFFF", 1),
        line.replace(b"41c5", b"41C5"),
        line.replace(b'"round":9', b'"round":9.0'),
    ):
        with pytest.raises(SeedLogError):
            parse_line(bad)
    empty = re.search(r'A round\s+with no contributions is `(\{"round":5,[^`]*\})`', PROTOCOL).group(1)
    digest5 = hashlib.sha256(b"onebyte/set/v1" + struct.pack("<Q", 5)).hexdigest()
    assert empty == f'{{"round":5,"digest":"{digest5}","records":[]}}'
    assert entry_line(5, digest5, []) == empty.encode() + b"\n"
    assert replay_set("demo", empty.encode() + b"\n", contribs_per_round=4, codec=ByteCodec()).contributions == []


def test_checkpoint_header_metadata(tmp_path):
    import torch

    from onebyte.peer.checkpoint import save_checkpoint

    path = tmp_path / "ckpt-000000040.safetensors"
    params = [("layer.bias", torch.zeros(8)), ("layer.weight", torch.ones(4, 8, dtype=torch.bfloat16))]
    info = save_checkpoint(path, params, 40, {"run_id": "demo", "initial_sha256": "0" * 64})
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert header["__metadata__"] == {
        "format": "onebyte-checkpoint/1",
        "round": "40",
        "sha256": info.sha256,
        "meta": '{"initial_sha256": "' + "0" * 64 + '", "run_id": "demo"}',
    }
    assert (header["layer.bias"]["dtype"], header["layer.weight"]["dtype"], header["layer.weight"]["shape"]) == (
        "F32",
        "BF16",
        [4, 8],
    )


# -- §5, §13: codec names and magnitudes, 64-bit hex values ----------------------------------------
def test_codec_grammar():
    for name in ("log8:-8:8", "log8:0:1", "log8:-40:64", "log8:20:64", "float32"):
        assert make_codec(name).name == name
    for name in (
        "log8:-08:8",
        "log8:+8:8",
        "log8:-0:8",
        "log8: -8:8",
        "log8:-8:8 ",
        "log8:1_0:8",
        "log8:-8:08",
        "LOG8:-8:8",
        "log8:-41:8",
        "log8:-8:65",
        "log8:-8:0",
        "log8:2:1",
        "log8:20:1",
        "log8",
    ):
        with pytest.raises(ValueError):
            make_codec(name)


@pytest.mark.parametrize("name", ["log8:-8:8", "log8:-4:4", "log8:-40:3", "log8:1:1", "log8:20:7"])
def test_codec_magnitudes_are_correctly_rounded_powers_of_two(name):
    mpmath = pytest.importorskip("mpmath")
    codec = make_codec(name)
    lo, steps = codec.min_exp, codec.steps_per_octave
    mpmath.mp.prec = 200
    for m in range(1, 128):
        exact = mpmath.power(2, mpmath.mpf(lo) + mpmath.mpf(m - 1) / steps)  # x taken exactly
        with mpmath.workprec(24):  # nearest binary32 (these are all normal numbers)
            nearest = float(+exact)
        assert codec.magnitudes[m] == nearest, (name, m)
    assert codec.magnitudes[0] == 0.0 and math.copysign(1, codec.decode(0x80)) == -1


def test_vector_hex_values_are_integers():
    vectors = json.loads(re.search(r"<!-- vectors:begin -->\s*```json\n(.*?)```", PROTOCOL, re.S).group(1))
    msg = (
        b"onebyte/seed/v1"
        + struct.pack("<I", 7)
        + b"vectors"
        + struct.pack("<I", 6)
        + b"peer-a"
        + struct.pack("<QI", 0, 0)
    )
    first8 = hashlib.sha256(msg).digest()[:8]
    assert (
        int(vectors["seed_vectors_peer-a_0_0"], 16)
        == int.from_bytes(first8, "little")
        == contribution_seed("vectors", "peer-a", 0, 0)
    )
    assert first8.hex(" ") == "4f a9 4a fd f6 a3 e6 62" and "`4f a9 4a fd f6 a3 e6 62`" in PROTOCOL


def test_a_found_dictionary_as_hivemind_sends_it():
    from hivemind.dht.storage import DictionaryDHTValue
    from hivemind.utils import get_dht_time

    subkey, signed, exp = b"ob1" + b"\x01" * 32, mp([1, 3, 1.5, b"A"]) + b"\x00" * 64, float(int(get_dht_time()) + 600)
    found = DictionaryDHTValue()
    found.store(subkey, signed, exp)
    data = mp([math.inf, exp, [[subkey, signed, exp]]])
    assert MSGPackSerializer.dumps(found) == b"\xc7" + bytes([len(data)]) + b"\x50" + data  # ext 8, type 0x50
