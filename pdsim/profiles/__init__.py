"""Latency profiles: the on-disk format, importers, derived (roofline) profiles."""
