//! The one place that knows what a runsc release can do.
//!
//! Everything here is derived from two facts read off the binary: its version (and the release
//! date in it, when there is one) and its [`Capabilities`] (flags and subcommands found in its
//! help texts, plus the defaults `runsc flags` prints). Flags are facts; what a flag is worth on
//! a given release is what this module decides, from behaviour measured on real releases:
//!
//! | behaviour | 20221219 | 20240729 | 20260905 (built from the Go module proxy) |
//! |---|---|---|---|
//! | image | one flate `checkpoint.img` | `checkpoint.img` + `pages.img` + `pages_meta.img` with `--compression=none` | the same; uncompressed is the default |
//! | `--leave-running`, standalone | unreliable | the sandbox keeps running | the sandbox keeps running |
//! | `--leave-running`, under containerd | hangs, task left broken | works | works |
//! | multi-container sandboxes | cannot be checkpointed | one image, restored root first | the same |
//! | default platform / rootfs overlay | ptrace / none | systrap / `root:self` | systrap / `root:self` |
//! | images of another runsc version | refused | refused (both directions tried) | refused: a 20240729 image fails with "container specs not found in metadata", and 20240729 fails on a 20260905 image with "statefile error: hash mismatch" |
//! | `pages.img` written | - | front to back by plain `write(2)`s, never rewritten (traced) | front to back by 256 KiB `pwrite(2)`s at the running end, one at a time, never rewritten (traced) |
//! | `restore --background` | no | no | yes (uncompressed images): returns once kernel state is loaded |
//! | `cpu-features`, `dev.gvisor.internal.cpufeatures` allow-list | no | no | yes |
//!
//! When the version carries no release date (a build from source prints none), podsnap cannot
//! know which side of those lines the binary is on, so it takes the behaviour that is correct on
//! every release: resume by restoring in place (standalone), refuse resume under containerd and
//! refuse multi-container checkpoints, each with a reason that names the version.

use crate::rootdir::RootfsOverlay;
use crate::runsc::{Capabilities, RunscVersion};
use std::fmt;

/// The last release whose `--leave-running` and multi-container checkpoints are broken.
pub const LAST_LIMITED_RELEASE: u32 = 20221219;

/// The releases whose image writes were traced (`strace` of the sandbox during a checkpoint):
/// `pages.img` grows front to back, each write done before the next starts, and is never
/// rewritten, so a push may read it while runsc writes. Other releases may write it another
/// way, so only these are followed.
pub const TRACED_APPEND_ONLY_RELEASES: &[u32] = &[20240729, 20260905];

/// Whether something is possible, and why not when it is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// It works on this release.
    Yes,
    /// It does not; the reason names the release.
    No(String),
}

impl Support {
    /// True when supported.
    pub fn is_yes(&self) -> bool {
        matches!(self, Support::Yes)
    }

    /// The reason it is not supported.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Support::Yes => None,
            Support::No(r) => Some(r),
        }
    }
}

/// How a sandbox keeps running after its checkpoint (`postCheckpoint: resume`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeMethod {
    /// `runsc checkpoint --leave-running`: the same sandbox goes on.
    LeaveRunning,
    /// Checkpoint (which stops it), delete, then restore the local image under the same id.
    RestoreInPlace,
    /// Not possible for this kind of sandbox on this release.
    Unsupported(String),
}

/// Who manages a sandbox, as far as release policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// Started with runsc directly.
    Standalone,
    /// Started by containerd's shim.
    Containerd,
}

/// What the node's runsc can do, decided once from its version and capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasePolicy {
    version: String,
    release: Option<u32>,
    caps: Capabilities,
}

impl ReleasePolicy {
    /// The policy of a runsc with this version and these capabilities.
    pub fn new(version: &RunscVersion, caps: &Capabilities) -> Self {
        ReleasePolicy {
            version: version.version.clone(),
            release: version.release_date,
            caps: caps.clone(),
        }
    }

    /// The version word, as runsc prints it.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The release date in the version, when there is one.
    pub fn release(&self) -> Option<u32> {
        self.release
    }

    /// True when the release is known to be newer than the last limited one.
    fn past_limits(&self) -> bool {
        self.release.is_some_and(|r| r > LAST_LIMITED_RELEASE)
    }

    fn unknown_release(&self) -> String {
        format!(
            "runsc {} carries no release date, so it cannot be told apart from {LAST_LIMITED_RELEASE} and older",
            self.version
        )
    }

    /// The `--compression` value to checkpoint with: `none` wherever runsc has the flag, so the
    /// image's pages reach podsnap's page dedup uncompressed (podsnap compresses with zstd).
    pub fn checkpoint_compression(&self) -> Option<&'static str> {
        self.caps.compression.then_some("none")
    }

    /// True when images are split into `checkpoint.img` + `pages.img` + `pages_meta.img`, so a
    /// second snapshot of a sandbox can share pages with the first.
    pub fn page_dedup_possible(&self) -> bool {
        self.caps.compression
    }

    /// The image files this release writes front to back with plain appends, so that a push
    /// can read them while runsc still writes (empty when that is not known to hold).
    pub fn image_files_written_in_order(&self) -> &'static [&'static str] {
        let traced = self
            .release
            .is_some_and(|r| TRACED_APPEND_ONLY_RELEASES.contains(&r));
        if self.page_dedup_possible() && traced {
            &["pages.img"]
        } else {
            &[]
        }
    }

    /// Whether a restore may pass `--background`: runsc then returns once the kernel's state
    /// is loaded and reads the application's pages as they are touched. Only where the flag
    /// exists, and only for the uncompressed images podsnap takes there (runsc pages in
    /// nothing else lazily).
    pub fn background_restore(&self) -> Support {
        if !self.caps.restore_background {
            Support::No(format!(
                "runsc {} has no restore --background",
                self.version
            ))
        } else if !self.page_dedup_possible() {
            Support::No(format!(
                "runsc {} writes compressed images, which restore --background cannot page in",
                self.version
            ))
        } else {
            Support::Yes
        }
    }

    /// Whether the sandbox's CPU features can be narrowed with the
    /// `dev.gvisor.internal.cpufeatures` annotation (and listed by `runsc cpu-features`): both
    /// came in the same release, so the subcommand's presence tells.
    pub fn cpu_allow_list(&self) -> bool {
        self.caps.cpu_features_command
    }

    /// Whether to pass `--exclude-committed-zero-pages`. Not used: podsnap never stores zero
    /// pages anyway, and the flag costs runsc a scan of every committed page.
    pub fn exclude_committed_zero_pages(&self) -> bool {
        false
    }

    /// How `resume` is honoured for a sandbox of this manager.
    pub fn resume_method(&self, manager: Manager) -> ResumeMethod {
        let leave_running = self.caps.leave_running && self.past_limits();
        match (manager, leave_running) {
            (_, true) => ResumeMethod::LeaveRunning,
            (Manager::Standalone, false) => ResumeMethod::RestoreInPlace,
            (Manager::Containerd, false) if !self.caps.leave_running => {
                ResumeMethod::Unsupported(format!("runsc {} has no --leave-running", self.version))
            }
            (Manager::Containerd, false) if self.release.is_none() => {
                ResumeMethod::Unsupported(format!(
                    "{}, whose --leave-running hangs under containerd and leaves the task broken",
                    self.unknown_release()
                ))
            }
            (Manager::Containerd, false) => ResumeMethod::Unsupported(format!(
                "--leave-running of runsc {} hangs under containerd and leaves the task broken",
                self.version
            )),
        }
    }

    /// Whether a sandbox of several containers (a pod) can be checkpointed.
    pub fn multi_container_checkpoint(&self) -> Support {
        if self.past_limits() {
            Support::Yes
        } else if self.release.is_none() {
            Support::No(format!(
                "{}, which cannot checkpoint multi-container sandboxes",
                self.unknown_release()
            ))
        } else {
            Support::No(format!(
                "runsc {} cannot checkpoint multi-container sandboxes",
                self.version
            ))
        }
    }

    /// Whether this runsc restores an image written by runsc `source`. Every release tried
    /// refuses images of another version (20240729 fails to decode 20221219's CPU feature set;
    /// 20221219 fails on 20240729's header), so versions must match. `None` when the image's
    /// version is unknown (then runsc decides).
    pub fn can_restore_image_of(&self, source: &str) -> Support {
        if source == self.version {
            Support::Yes
        } else {
            Support::No(format!(
                "the snapshot was taken with runsc {source} and this node runs runsc {}; runsc restores only images of its own version",
                self.version
            ))
        }
    }

    /// The platform a sandbox runs on when no `--platform` is given.
    pub fn default_platform(&self) -> String {
        match &self.caps.default_platform {
            Some(p) => p.clone(),
            None if self.past_limits() => "systrap".into(),
            None => "ptrace".into(),
        }
    }

    /// The rootfs overlay of a sandbox started without `--overlay2`.
    pub fn default_overlay(&self) -> RootfsOverlay {
        match &self.caps.default_overlay {
            Some(v) => RootfsOverlay::from_overlay2(v),
            None => RootfsOverlay::None,
        }
    }
}

impl ReleasePolicy {
    /// What this release cannot do, one reason each (for `node-info`).
    pub fn limits(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.page_dedup_possible() {
            out.push(format!(
                "runsc {} writes one compressed image: a snapshot shares no pages with the previous one",
                self.version
            ));
        }
        if self.resume_method(Manager::Standalone) == ResumeMethod::RestoreInPlace {
            out.push(format!(
                "resume of standalone sandboxes restores them in place (--leave-running of runsc {} is not used)",
                self.version
            ));
        }
        if let ResumeMethod::Unsupported(r) = self.resume_method(Manager::Containerd) {
            out.push(format!("no resume under containerd: {r}"));
        }
        if let Some(r) = self.multi_container_checkpoint().reason() {
            out.push(format!("no pods: {r}"));
        }
        if self.page_dedup_possible() && self.image_files_written_in_order().is_empty() {
            out.push(format!(
                "uploads start once runsc {} has written the whole image (only releases {} are known to write pages.img front to back)",
                self.version,
                TRACED_APPEND_ONLY_RELEASES
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out
    }
}

impl fmt::Display for ReleasePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "runsc {}", self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(version: &str, caps: Capabilities) -> ReleasePolicy {
        let v = RunscVersion::parse(&format!("runsc version {version}\n")).unwrap();
        ReleasePolicy::new(&v, &caps)
    }

    fn old() -> ReleasePolicy {
        policy(
            "0.0~20221219.0",
            Capabilities {
                leave_running: true,
                ..Default::default()
            },
        )
    }

    fn current() -> ReleasePolicy {
        policy(
            "0.0~20240729.0",
            Capabilities {
                leave_running: true,
                compression: true,
                exclude_committed_zero_pages: true,
                checkpoint_direct: true,
                restore_direct: true,
                default_platform: Some("systrap".into()),
                default_overlay: Some("root:self".into()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn release_20221219_resumes_in_place_standalone_and_refuses_resume_under_containerd() {
        let p = old();
        assert_eq!(
            p.resume_method(Manager::Standalone),
            ResumeMethod::RestoreInPlace
        );
        match p.resume_method(Manager::Containerd) {
            ResumeMethod::Unsupported(r) => assert!(r.contains("20221219"), "{r}"),
            m => panic!("{m:?}"),
        }
        assert!(!p.multi_container_checkpoint().is_yes());
        assert_eq!(p.checkpoint_compression(), None);
        assert!(!p.page_dedup_possible());
        assert_eq!(p.default_platform(), "ptrace");
        assert_eq!(p.default_overlay(), RootfsOverlay::None);
    }

    #[test]
    fn release_20240729_leaves_running_everywhere_and_checkpoints_pods_uncompressed() {
        let p = current();
        assert_eq!(
            p.resume_method(Manager::Standalone),
            ResumeMethod::LeaveRunning
        );
        assert_eq!(
            p.resume_method(Manager::Containerd),
            ResumeMethod::LeaveRunning
        );
        assert!(p.multi_container_checkpoint().is_yes());
        assert_eq!(p.checkpoint_compression(), Some("none"));
        assert!(p.page_dedup_possible());
        assert_eq!(p.image_files_written_in_order(), ["pages.img"]);
        assert_eq!(p.default_platform(), "systrap");
        assert_eq!(p.default_overlay(), RootfsOverlay::SelfBacked);
    }

    fn release_2026() -> ReleasePolicy {
        policy(
            "release-20260905.0",
            Capabilities {
                leave_running: true,
                compression: true,
                exclude_committed_zero_pages: true,
                checkpoint_direct: true,
                restore_background: true,
                restore_direct: true,
                cpu_features_command: true,
                default_platform: Some("systrap".into()),
                default_overlay: Some("root:self".into()),
            },
        )
    }

    #[test]
    fn release_2026_restores_in_the_background_and_narrows_cpu_features() {
        let p = release_2026();
        assert_eq!(p.release(), Some(20260905));
        assert!(p.background_restore().is_yes());
        assert!(p.cpu_allow_list());
        assert_eq!(p.checkpoint_compression(), Some("none"));
        assert_eq!(p.image_files_written_in_order(), ["pages.img"]);
        assert_eq!(
            p.resume_method(Manager::Containerd),
            ResumeMethod::LeaveRunning
        );
        assert!(p.multi_container_checkpoint().is_yes());
        assert!(p.limits().is_empty(), "{:?}", p.limits());
        let why = current().background_restore();
        assert!(
            why.reason().unwrap().contains("no restore --background"),
            "{why:?}"
        );
        assert!(!current().cpu_allow_list() && !old().cpu_allow_list());
    }

    #[test]
    fn images_of_20240729_and_2026_are_refused_both_ways_naming_both_versions() {
        for (node, image) in [
            (release_2026(), "0.0~20240729.0"),
            (current(), "release-20260905.0"),
        ] {
            let why = node.can_restore_image_of(image);
            let why = why.reason().unwrap();
            assert!(why.contains(image) && why.contains(node.version()), "{why}");
        }
    }

    #[test]
    fn only_traced_releases_are_followed_while_runsc_writes() {
        assert!(old().image_files_written_in_order().is_empty());
        let newer = policy("release-20250512.0", current().caps);
        assert!(newer.image_files_written_in_order().is_empty());
        let l = newer.limits();
        assert!(
            l.iter()
                .any(|r| r.contains("uploads start once runsc release-20250512.0")),
            "{l:?}"
        );
        let unknown = policy("VERSION_MISSING", current().caps);
        assert!(unknown.image_files_written_in_order().is_empty());
    }

    #[test]
    fn an_unknown_release_takes_the_behaviour_correct_on_every_release() {
        let mut caps = current().caps;
        caps.default_platform = None;
        let p = policy("VERSION_MISSING", caps);
        assert_eq!(p.release(), None);
        assert_eq!(
            p.resume_method(Manager::Standalone),
            ResumeMethod::RestoreInPlace
        );
        match p.resume_method(Manager::Containerd) {
            ResumeMethod::Unsupported(r) => {
                assert!(
                    r.contains("VERSION_MISSING") && r.contains("no release date"),
                    "{r}"
                )
            }
            m => panic!("{m:?}"),
        }
        let r = p.multi_container_checkpoint();
        assert!(r.reason().unwrap().contains("no release date"));
        // Flags are facts whatever the version says.
        assert_eq!(p.checkpoint_compression(), Some("none"));
        assert_eq!(p.default_platform(), "ptrace");
    }

    #[test]
    fn limits_name_what_the_release_cannot_do() {
        let l = old().limits();
        assert_eq!(l.len(), 4, "{l:?}");
        assert!(l.iter().any(|r| r.starts_with("no pods")), "{l:?}");
        assert!(current().limits().is_empty());
    }

    #[test]
    fn flag_defaults_are_read_from_runsc_flags() {
        use crate::runsc::types::flag_default;
        let text = "  -overlay2 value\n    \twrap mounts with overlayfs. (default root:self)\n  -platform string\n    \tspecifies which platform to use: systrap (default), ptrace, kvm. (default \"systrap\")\n  -pprof\n";
        assert_eq!(flag_default(text, "platform").as_deref(), Some("systrap"));
        assert_eq!(flag_default(text, "overlay2").as_deref(), Some("root:self"));
        assert_eq!(flag_default(text, "pprof"), None);
        assert_eq!(flag_default(text, "network"), None);
        // 2026's --overlay2 explains its format over several lines before its default.
        let text = "  -overlay\n    \tDEPRECATED: use --overlay2=all:memory to achieve the same effect\n  -overlay2 value\n    \twrap mounts with overlayfs. Format is\n    \t* 'none' to turn overlay mode off\n    \t* {mount}:{medium}[,size={size}], where\n    \t    'mount' can be 'root' or 'all'\n    \t (default root:self)\n  -override-procs string\n    \tcomma-separated list (e.g. kallsyms)\n";
        assert_eq!(flag_default(text, "overlay2").as_deref(), Some("root:self"));
        assert_eq!(flag_default(text, "overlay"), None);
        assert_eq!(flag_default(text, "override-procs"), None);
    }

    #[test]
    fn a_runsc_without_leave_running_says_so() {
        let p = policy("release-20250101.0", Capabilities::default());
        assert_eq!(
            p.resume_method(Manager::Standalone),
            ResumeMethod::RestoreInPlace
        );
        match p.resume_method(Manager::Containerd) {
            ResumeMethod::Unsupported(r) => assert!(r.contains("no --leave-running"), "{r}"),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn images_restore_only_on_their_own_runsc_version() {
        let p = current();
        assert!(p.can_restore_image_of("0.0~20240729.0").is_yes());
        let r = p.can_restore_image_of("0.0~20221219.0");
        let why = r.reason().unwrap();
        assert!(
            why.contains("0.0~20221219.0") && why.contains("0.0~20240729.0"),
            "{why}"
        );
        assert!(!old().can_restore_image_of("0.0~20240729.0").is_yes());
    }
}
