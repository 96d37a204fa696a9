//! Plumbing shared by podsnapd's in-process tests (each test binary uses part of it). The
//! process-level tests start podsnapd with `podsnap_testkit::daemon`.

#![allow(dead_code)]

pub mod harness;
