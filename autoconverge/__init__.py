"""autoconverge: verified vCPU throttling (auto-converge) for pre-copy live migration.

The subpackages, each a top-level folder of the source tree: ``spec`` (the lifecycles,
declared once), ``model`` (exploration), ``proofs`` (Z3, SPIN, TLC), ``impl`` (the
throttler, KVM, the migration) and ``cli`` (the ``autoconverge`` command, also run as
``python -m autoconverge``). Importing this package imports none of them.
"""
