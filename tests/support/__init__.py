"""Reusable test machinery shared by several test tiers (for example the gRPC fuzzing harness)."""
