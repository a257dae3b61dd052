//! L4 forwarding: service lookup, schedulers, conntrack, NAT and DR. (Work in progress.)
