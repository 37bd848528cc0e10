"""Attacks: what an adversary does with an oracle."""
