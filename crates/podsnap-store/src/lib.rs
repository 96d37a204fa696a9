//! podsnap-store
