"""Chaos harness: real beats, real faults, an offline check of the whole history."""
