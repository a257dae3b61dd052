//! Network-namespace labs, crafted frames, and BPF_PROG_TEST_RUN.
