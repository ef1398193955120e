//! The Prometheus endpoint (see README.md).
