"""A hivemind record validator that lets only a key's owner write its subkey.

onebyte stores every record under a subkey ``b"ob1" + public key`` (35 bytes). Such a record must
end with an Ed25519 signature by that key over (DHT key id, subkey, value, expiration), so no one
can write, alter or re-date another peer's record, nor move it to another key (another round).
hivemind calls ``validate`` on every store it receives and on every value another node returns.
A onebyte DHT holds nothing else: a record without such a subkey (a plain value would replace a
round's whole dictionary in hivemind's storage) or whose signed value is not msgpack (it would
break every reader's get of that key) is refused too, and so are values larger than any record a
reader accepts and expirations further ahead than any onebyte record needs: a node stores, and
keeps, only what a peer could use. Nothing here hands an attacker's bytes to hivemind's own msgpack
decoder (which logs a warning per unknown extension object): the subkey is compared byte for byte
and the value is decoded by onebyte.dht.wire, which bounds nesting depth and size and refuses
extension types (a value nested ~500 deep passed msgpack but broke every reader's get).
"""

from __future__ import annotations

import struct
from collections import Counter

from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import MSGPackSerializer, get_dht_time

from onebyte.dht import wire
from onebyte.dht.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify

SUBKEY_MARKER = b"ob1"
MAX_VALUE_BYTES = 8192  # readers skip larger payloads: far below hivemind's pipe limit (~10-16 KB, see notes)
# Readers skip payloads over MAX_VALUE_BYTES; msgpack framing around a payload adds a few bytes.
MAX_STORED_BYTES = MAX_VALUE_BYTES + 256
# The longest-lived record is the manifest (30 days); a day of slack covers clock skew.
MAX_EXPIRATION_AHEAD = 31 * 24 * 3600.0


def owner_subkey(public_key: bytes) -> bytes:
    return SUBKEY_MARKER + public_key


def subkey_owner(subkey: object) -> bytes | None:
    """The public key inside an onebyte subkey, or None if it is not one."""
    if (
        isinstance(subkey, bytes)
        and len(subkey) == len(SUBKEY_MARKER) + PUBLIC_KEY_BYTES
        and subkey.startswith(SUBKEY_MARKER)
    ):
        return subkey[len(SUBKEY_MARKER) :]
    return None


_PACKED_SUBKEY_PREFIX = (
    b"\xc4" + bytes([len(SUBKEY_MARKER) + PUBLIC_KEY_BYTES]) + SUBKEY_MARKER
)  # msgpack bin 8 of 35 bytes


def packed_subkey_owner(packed: object) -> bytes | None:
    """The public key inside a msgpack-encoded onebyte subkey, compared byte for byte (no decoder runs)."""
    if (
        isinstance(packed, bytes)
        and len(packed) == len(_PACKED_SUBKEY_PREFIX) + PUBLIC_KEY_BYTES
        and packed.startswith(_PACKED_SUBKEY_PREFIX)
    ):
        return packed[len(_PACKED_SUBKEY_PREFIX) :]
    return None


def signed_message(record: DHTRecord) -> bytes:
    return (
        b"onebyte/record/v1"
        + struct.pack("<I", len(record.key))
        + record.key
        + struct.pack("<I", len(record.subkey))
        + record.subkey
        + struct.pack("<d", record.expiration_time)
        + record.value
    )


class Ed25519OwnerValidator(RecordValidatorBase):
    def __init__(self, identity: Identity):
        self.identity = identity
        self._own_subkey_bytes = MSGPackSerializer.dumps(owner_subkey(identity.public_key))
        self.rejected: Counter[str] = Counter()  # lives in the DHT process; read via run_coroutine

    def _owner(self, record: DHTRecord) -> bytes | None:
        return packed_subkey_owner(record.subkey)

    def validate(self, record: DHTRecord) -> bool:
        owner = self._owner(record)
        if owner is None:
            self.rejected["foreign_subkey"] += 1
            return False
        if len(record.value) <= SIGNATURE_BYTES:
            self.rejected["unsigned"] += 1
            return False
        if len(record.value) > MAX_STORED_BYTES + SIGNATURE_BYTES:
            self.rejected["oversized"] += 1
            return False
        if not record.expiration_time <= get_dht_time() + MAX_EXPIRATION_AHEAD:  # also refuses NaN
            self.rejected["expiration_too_far"] += 1
            return False
        stripped = DHTRecord(record.key, record.subkey, record.value[:-SIGNATURE_BYTES], record.expiration_time)
        if not verify(owner, record.value[-SIGNATURE_BYTES:], signed_message(stripped)):
            self.rejected["bad_signature"] += 1
            return False
        try:
            wire.loads(stripped.value, max_bytes=MAX_STORED_BYTES)
        except wire.WireError as e:  # not msgpack, too deep, extension types, too many objects
            self.rejected[e.reason] += 1
            return False
        return True

    def sign_value(self, record: DHTRecord) -> bytes:
        if record.subkey != self._own_subkey_bytes:
            return record.value
        return record.value + self.identity.sign(signed_message(record))

    def strip_value(self, record: DHTRecord) -> bytes:
        return record.value[:-SIGNATURE_BYTES] if self._owner(record) is not None else record.value

    @property
    def priority(self) -> int:
        return 10  # validate signatures before anything deserializes the value

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return isinstance(other, Ed25519OwnerValidator)
