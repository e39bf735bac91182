"""autoconverge.impl.migration: pre-copy live migration of a KVM guest, served by the throttler."""
