"""evolve: population search over training scaffolding."""
