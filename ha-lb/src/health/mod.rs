//! Real-server health checks.
