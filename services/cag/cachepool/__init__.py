"""The cache pool: owns the engine and module residency across tiers (engine, host RAM, local disk)."""
