"""Mutation testing of the harness itself: deliberately broken variants of the reference (mutants.py), each
of which the clause it declares must catch, and the kill matrix that shows it (kill.py)."""
