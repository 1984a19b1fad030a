"""Reading a run back: the population, lineage, status, the report, its figures and the git export."""
