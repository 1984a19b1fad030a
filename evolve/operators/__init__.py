"""Operators: what makes a child variant from its parents."""
