"""Serving logic: one handler per endpoint family, between the protocol models and the Triton client."""
