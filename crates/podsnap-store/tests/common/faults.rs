//! A fault-injecting [`ObjectStore`] wrapper for reliability tests.
//!
//! [`Faults`] wraps any `Arc<dyn ObjectStore>` and, per call:
//! * counts it and tracks how many calls are in flight at once (and the peak),
//! * sleeps for the configured latency (while counted as in flight),
//! * fails it with `object_store::Error::Generic` while the store is "down" (switched by hand,
//!   or by an armed outage that starts at an exact call of a method),
//! * fails the first N calls of a method (per [`Op`]) with a transient `Generic` error,
//! * for create-only puts in "lose the response" mode: performs the put underneath and then
//!   returns an error, as a client whose response was lost on the wire sees it.
//!
//! object_store's trait is declared with `async_trait`, and so is this implementation.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// The kinds of call faults can be aimed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `put`/`put_opts` in overwrite mode (packs, indexes).
    Put,
    /// `put_opts` with `PutMode::Create` (the manifest commit).
    PutCreate,
    /// Whole-object `get`.
    Get,
    /// Ranged `get` (pull's blob reads).
    GetRange,
    Head,
    List,
    Delete,
    /// Everything else (copy, multipart, list_with_delimiter).
    Other,
}

/// An outage that starts at a given call of one method.
#[derive(Clone, Copy, Debug)]
enum Outage {
    Off,
    /// Goes down when `op` is called for the `after + 1`th time, for `lasts` (or until ended).
    Armed {
        op: Op,
        after: u32,
        lasts: Option<Duration>,
    },
    /// Down until then (or until ended).
    Down(Option<Instant>),
}

pub struct Faults {
    inner: Arc<dyn ObjectStore>,
    outage: Mutex<Outage>,
    outages: AtomicU32,
    fail_first: Mutex<HashMap<Op, u32>>,
    latency_us: AtomicU64,
    down: AtomicBool,
    lose_create_responses: AtomicU32,
    calls: Mutex<HashMap<Op, u32>>,
    injected: AtomicU32,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faults({:?})", self.inner)
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faults({})", self.inner)
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        source: what.to_string().into(),
    }
}

/// Decrements the in-flight counter when a call ends (or is dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Faults {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Faults> {
        Arc::new(Faults {
            inner,
            outage: Mutex::new(Outage::Off),
            outages: AtomicU32::new(0),
            fail_first: Mutex::new(HashMap::new()),
            latency_us: AtomicU64::new(0),
            down: AtomicBool::new(false),
            lose_create_responses: AtomicU32::new(0),
            calls: Mutex::new(HashMap::new()),
            injected: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    /// The next `n` calls of `op` fail with a transient error (added to any pending ones).
    pub fn fail_next(&self, op: Op, n: u32) {
        *self.fail_first.lock().unwrap().entry(op).or_default() += n;
    }

    /// Every call sleeps this long before it reaches the inner store.
    pub fn set_latency(&self, d: Duration) {
        self.latency_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// While down, every call fails with a transient error.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Arms an outage: the store goes down at the `after + 1`th call of `op` (that call fails),
    /// and stays down for `lasts`, or until [`Faults::end_outage`] when `None`.
    pub fn outage_after(&self, op: Op, after: u32, lasts: Option<Duration>) {
        *self.outage.lock().unwrap() = Outage::Armed { op, after, lasts };
    }

    /// Ends an outage (armed or started).
    pub fn end_outage(&self) {
        *self.outage.lock().unwrap() = Outage::Off;
    }

    /// How many armed outages have started.
    pub fn outages(&self) -> u32 {
        self.outages.load(Ordering::SeqCst)
    }

    /// The next `n` create-only puts succeed underneath and report an error to the caller.
    pub fn lose_create_responses(&self, n: u32) {
        self.lose_create_responses.fetch_add(n, Ordering::SeqCst);
    }

    /// Calls of `op` seen so far (failed ones included).
    pub fn calls(&self, op: Op) -> u32 {
        self.calls.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    /// Errors injected so far (transient, down and lost responses).
    pub fn injected(&self) -> u32 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Transient failures still pending for `op`.
    pub fn pending(&self, op: Op) -> u32 {
        self.fail_first
            .lock()
            .unwrap()
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// The most calls that were in flight at one time.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Counts the call, marks it in flight, waits the latency, then decides its fate.
    async fn enter(&self, op: Op) -> object_store::Result<InFlight<'_>> {
        self.count(op);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(&self.in_flight);
        let us = self.latency_us.load(Ordering::SeqCst);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
        self.check(op)?;
        Ok(guard)
    }

    /// Counts a call of `op`, starting an armed outage when this is its call.
    fn count(&self, op: Op) {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(op).or_default();
            *n += 1;
            *n
        };
        let mut outage = self.outage.lock().unwrap();
        if let Outage::Armed {
            op: on,
            after,
            lasts,
        } = *outage
        {
            if on == op && n > after {
                *outage = Outage::Down(lasts.map(|d| Instant::now() + d));
                self.outages.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Whether an armed outage is in progress (ending it when its time is up).
    fn in_outage(&self) -> bool {
        let mut outage = self.outage.lock().unwrap();
        match *outage {
            Outage::Down(None) => true,
            Outage::Down(Some(until)) if Instant::now() < until => true,
            Outage::Down(Some(_)) => {
                *outage = Outage::Off;
                false
            }
            _ => false,
        }
    }

    /// The synchronous part of [`Faults::enter`] (for `list`, which is not async).
    fn check(&self, op: Op) -> object_store::Result<()> {
        if self.down.load(Ordering::SeqCst) || self.in_outage() {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(injected("store is down (injected)"));
        }
        let mut ff = self.fail_first.lock().unwrap();
        if let Some(n) = ff.get_mut(&op) {
            if *n > 0 {
                *n -= 1;
                self.injected.fetch_add(1, Ordering::SeqCst);
                return Err(injected("transient error (injected)"));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for Faults {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create = matches!(opts.mode, PutMode::Create);
        let _g = self
            .enter(if create { Op::PutCreate } else { Op::Put })
            .await?;
        let r = self.inner.put_opts(location, payload, opts).await?;
        if create
            && self
                .lose_create_responses
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(injected("response lost after a successful put (injected)"));
        }
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let _g = self.enter(Op::Other).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head {
            Op::Head
        } else if options.range.is_some() {
            Op::GetRange
        } else {
            Op::Get
        };
        let _g = self.enter(op).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        let _g = self.enter(Op::GetRange).await?;
        self.inner.get_range(location, range).await
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        let _g = self.enter(Op::Head).await?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        let _g = self.enter(Op::Delete).await?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.count(Op::List);
        match self.check(Op::List) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let _g = self.enter(Op::Other).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        let _g = self.enter(Op::Other).await?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        let _g = self.enter(Op::Other).await?;
        self.inner.copy_if_not_exists(from, to).await
    }
}
