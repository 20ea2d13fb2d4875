"""Membership: gossip dissemination, failure detection and the emergent leader (sans-IO)."""
