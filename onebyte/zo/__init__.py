"""The pure math of onebyte: directions, estimator, one-byte code, update rule, weight hash.

Imports torch and numpy only; no networking, no model loading.
"""

from onebyte.zo.codec import ByteCodec, Float32Codec, make_codec
from onebyte.zo.hashing import weights_sha256
from onebyte.zo.noise import NoiseTable, contribution_seed, tensor_offset
from onebyte.zo.perturb import Perturbation, UnexercisedParameterError, perturbed_copy, spsa_estimate
from onebyte.zo.update import apply_round

__all__ = [
    "ByteCodec",
    "Float32Codec",
    "NoiseTable",
    "Perturbation",
    "UnexercisedParameterError",
    "apply_round",
    "contribution_seed",
    "make_codec",
    "perturbed_copy",
    "spsa_estimate",
    "tensor_offset",
    "weights_sha256",
]
