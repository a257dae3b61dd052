//! Loading the eBPF object, attaching programs, and reading/writing maps (the BPF edge).
