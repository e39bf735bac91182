"""autoconverge.model: exhaustive and randomized exploration of the spec and of the real code."""
