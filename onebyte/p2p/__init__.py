"""Peer-to-peer streams between two peers (catch-up: .info, .log, .state), beside the DHT's records."""
