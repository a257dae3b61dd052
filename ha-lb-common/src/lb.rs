//! Load-balancing maps: services, real servers, backend sets, connection tracking, counters.
//! (Filled in by the XDP forwarding work.)
