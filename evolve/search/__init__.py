"""The driver's search: the Ray Tune searcher, selection, the heuristic operator, confirmation and the baselines."""
