"""The compiler: static knowledge in, verified KV modules out."""
