"""Events on the NATS backbone: subjects, versioned schemas, publishing and idempotent consumption."""
