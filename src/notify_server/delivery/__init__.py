"""Delivering notifications: the outbox worker and one channel adapter per provider."""
