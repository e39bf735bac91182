"""The ``autoconverge`` command line: the one package that sees every other one.

spec/ declares, model/ explores, proofs/ proves, impl/ runs; the subcommands here put them
together (``autoconverge verify`` runs model/ and proofs/ on spec/; ``migrate`` runs impl/).
Nothing outside this package imports it.
"""
