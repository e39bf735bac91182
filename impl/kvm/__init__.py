"""autoconverge.impl.kvm: thin KVM bindings (Kvm, Vm, Vcpu) and a guest whose vCPUs the throttler pauses."""
