//! podsnap-runtime
