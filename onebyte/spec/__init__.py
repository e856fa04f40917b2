"""The specification's executable parts: test vectors for docs/PROTOCOL.md."""
