"""autoconverge.proofs: unbounded Z3 proofs of the spec's properties, SPIN/TLC cross-checks."""
