"""The run's durable record: the store, its cloud mirror and the sealed hashes."""
