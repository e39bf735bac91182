"""autoconverge.impl.kvm: KVM bindings (Kvm, Vm, Vcpu) and GuestVm, whose vCPUs are throttled."""
