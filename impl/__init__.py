"""autoconverge.impl: the real threaded throttler, its runtimes, the CLI, KVM and migration."""
