"""Deployment profiles rendered into a complete Triton model repository."""
