//! Shared by the wrapper's tests: a fake podsnapd.

pub mod fake_daemon {
    //! An in-test tonic server standing in for podsnapd, implementing only PrepareRestore
    //! (the layer above the wrapper; the real daemon is exercised end to end elsewhere).

    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use podsnap_proto::v1::podsnap_server::{Podsnap, PodsnapServer};
    use podsnap_proto::v1::*;
    use tonic::{Request, Response, Status};

    /// The fake podsnapd: PrepareRestore answers `image_dir` for `ok_snapshot` and NOT_FOUND
    /// otherwise, recording requests.
    #[derive(Clone)]
    struct FakeDaemon {
        ok_snapshot: String,
        image_dir: String,
        seen: Arc<Mutex<Vec<PrepareRestoreRequest>>>,
    }

    type EmptyStream<T> = tokio_stream::Empty<Result<T, Status>>;

    #[tonic::async_trait]
    impl Podsnap for FakeDaemon {
        type CheckpointStream = EmptyStream<CheckpointEvent>;
        type RestoreStream = EmptyStream<RestoreEvent>;
        type PrefetchStream = EmptyStream<podsnap_proto::v1::PrefetchEvent>;

        async fn prefetch(
            &self,
            _: Request<podsnap_proto::v1::PrefetchRequest>,
        ) -> Result<Response<Self::PrefetchStream>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn checkpoint(
            &self,
            _: Request<CheckpointRequest>,
        ) -> Result<Response<Self::CheckpointStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn restore(
            &self,
            _: Request<RestoreRequest>,
        ) -> Result<Response<Self::RestoreStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn prepare_restore(
            &self,
            req: Request<PrepareRestoreRequest>,
        ) -> Result<Response<PrepareRestoreResponse>, Status> {
            let req = req.into_inner();
            self.seen.lock().unwrap().push(req.clone());
            if req.snapshot_id == self.ok_snapshot {
                Ok(Response::new(PrepareRestoreResponse {
                    image_dir: self.image_dir.clone(),
                    ..Default::default()
                }))
            } else if req.snapshot_id == "snap-incompatible" {
                Err(Status::failed_precondition(
                    "snapshot snap-incompatible needs CPU features this node lacks: avx512f, amx_tile",
                ))
            } else {
                Err(Status::not_found(format!(
                    "snapshot {} not found in the store",
                    req.snapshot_id
                )))
            }
        }
        async fn list_snapshots(
            &self,
            _: Request<ListSnapshotsRequest>,
        ) -> Result<Response<ListSnapshotsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_snapshot(
            &self,
            _: Request<GetSnapshotRequest>,
        ) -> Result<Response<Snapshot>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn delete_snapshot(
            &self,
            _: Request<DeleteSnapshotRequest>,
        ) -> Result<Response<DeleteSnapshotResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn check_compatibility(
            &self,
            _: Request<CheckCompatibilityRequest>,
        ) -> Result<Response<CheckCompatibilityResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_node_info(
            &self,
            _: Request<GetNodeInfoRequest>,
        ) -> Result<Response<NodeInfo>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn list_jobs(
            &self,
            _: Request<ListJobsRequest>,
        ) -> Result<Response<ListJobsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    /// Serves the fake daemon on `socket` from a background thread for the test's lifetime.
    pub fn serve(
        socket: &Path,
        ok_snapshot: &str,
        image_dir: &Path,
    ) -> Arc<Mutex<Vec<PrepareRestoreRequest>>> {
        let fake = FakeDaemon {
            ok_snapshot: ok_snapshot.to_string(),
            image_dir: image_dir.display().to_string(),
            seen: Arc::default(),
        };
        let seen = fake.seen.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(async { tokio::net::UnixListener::bind(socket) })
            .unwrap();
        std::thread::spawn(move || {
            rt.block_on(async move {
                tonic::transport::Server::builder()
                    .add_service(PodsnapServer::new(fake))
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                    .await
                    .unwrap();
            })
        });
        seen
    }
}
