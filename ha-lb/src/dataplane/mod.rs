//! Data-plane state: the `Dataplane` trait, diff types, XDP and IPVS implementations.
