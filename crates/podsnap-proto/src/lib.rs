//! Generated gRPC types and service stubs for `proto/podsnap/v1/podsnap.proto`, and (feature
//! `client`) the one Unix-socket connector every client uses. Domain crates never see the
//! generated types; podsnapd converts at the edge.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("podsnap.v1");

    /// Encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("podsnap_descriptor");
}

#[cfg(feature = "client")]
pub mod client;
