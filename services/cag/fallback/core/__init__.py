"""The fallback's pure core (no transport, no database, no torch): chunking, who may read a chunk, the evidence
order, promotion candidates."""
