//! `podsnapctl cpu-features` and `podsnapctl cpu-check`: offline CPU feature set commands.
//!
//! - `cpu-features` prints this node's feature set the way current `runsc cpu-features` does
//!   (gVisor's names, comma-separated, gVisor's order); `--json` prints the JSON shape that
//!   snapshot manifests record; `--intersect A.json B.json ...` prints the features common to
//!   those sets as the value for the `dev.gvisor.internal.cpufeatures` annotation (or, with
//!   `--json`, as a feature set).
//! - `cpu-check FILE` checks a recorded feature set (a feature set JSON, or a snapshot manifest
//!   whose `source.cpu` holds one) against this node with gVisor's restore rule. It exits 0 when
//!   a restore here would pass gVisor's CPU check; otherwise it prints what is missing on stderr
//!   and returns [`EXIT_INCOMPATIBLE`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use podsnap_cpu::{CpuError, CpuInfo};

/// Exit status of `cpu-check` when the snapshot cannot restore on this node.
pub const EXIT_INCOMPATIBLE: i32 = 1;

/// Largest file `--intersect` and `cpu-check` read (a manifest with many files is larger than a
/// bare feature set).
const MAX_INPUT_LEN: u64 = 16 << 20;

/// Arguments of `podsnapctl cpu-features`.
#[derive(Debug, clap::Args)]
pub struct CpuFeaturesArgs {
    /// Print {"vendor", "family", "model", "stepping", "cache_line_size", "features"} as JSON
    #[arg(long)]
    pub json: bool,

    /// Print the features common to these feature sets (JSON files from `cpu-features --json`
    /// or snapshot manifests) as the dev.gvisor.internal.cpufeatures annotation value
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub intersect: Vec<PathBuf>,
}

/// Arguments of `podsnapctl cpu-check`.
#[derive(Debug, clap::Args)]
pub struct CpuCheckArgs {
    /// Feature set JSON (from `cpu-features --json`) or snapshot manifest JSON (its source.cpu)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `podsnapctl cpu-features`.
pub fn run_cpu_features(args: CpuFeaturesArgs) -> anyhow::Result<()> {
    let info = if args.intersect.is_empty() {
        podsnap_cpu::host().context("cannot read this node's CPU features")?
    } else {
        let sets = args
            .intersect
            .iter()
            .map(|p| load_cpu_info(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        podsnap_cpu::intersect(&sets).map_err(|e| match e {
            CpuError::CacheLineDisagreement {
                first,
                position,
                other,
            } => anyhow::anyhow!(
                "cannot intersect: {} has cache line {first} but {} has {other}; \
                 snapshots cannot move between those nodes whatever the allow-list",
                args.intersect[0].display(),
                args.intersect[position - 1].display()
            ),
            e => anyhow::Error::new(e).context("cannot intersect the CPU feature sets"),
        })?
    };
    if args.json {
        println!("{}", podsnap_cpu::to_json_pretty(&info));
    } else {
        println!("{}", podsnap_cpu::annotation_value(&info));
    }
    Ok(())
}

/// Runs `podsnapctl cpu-check FILE`; returns the process exit status (0 or
/// [`EXIT_INCOMPATIBLE`]).
pub fn run_cpu_check(args: CpuCheckArgs) -> anyhow::Result<i32> {
    let saved = load_cpu_info(&args.file)?;
    let host = podsnap_cpu::host().context("cannot read this node's CPU features")?;
    match podsnap_cpu::check(&saved, &host) {
        Ok(()) => {
            println!(
                "compatible: this node has all {} CPU features of {} (cache line {})",
                saved.features.len(),
                args.file.display(),
                host.cache_line_size
            );
            Ok(0)
        }
        Err(incompatible) => {
            eprintln!("{}: {incompatible}", args.file.display());
            Ok(EXIT_INCOMPATIBLE)
        }
    }
}

/// Reads a feature set from `path`: either the `cpu-features --json` shape or a snapshot
/// manifest carrying one in `source.cpu`.
fn load_cpu_info(path: &Path) -> anyhow::Result<CpuInfo> {
    let text = read_bounded(path)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let cpu = if value.get("features").is_some() {
        value
    } else if let Some(source) = value.get("source") {
        match source.get("cpu") {
            Some(serde_json::Value::Null) | None => bail!(
                "{}: the snapshot manifest records no CPU feature set (source.cpu is empty)",
                path.display()
            ),
            Some(cpu) => cpu.clone(),
        }
    } else {
        bail!(
            "{}: neither a CPU feature set (no \"features\") nor a snapshot manifest \
             (no \"source.cpu\")",
            path.display()
        );
    };
    podsnap_cpu::from_json_value(cpu)
        .with_context(|| format!("{}: bad CPU feature set", path.display()))
}

fn read_bounded(path: &Path) -> anyhow::Result<String> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_INPUT_LEN + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    if text.len() as u64 > MAX_INPUT_LEN {
        bail!(
            "{} is larger than {} MiB; not a feature set or manifest",
            path.display(),
            MAX_INPUT_LEN >> 20
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Cmd {
        CpuFeatures(CpuFeaturesArgs),
        CpuCheck(CpuCheckArgs),
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("podsnapctl-cpu-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn parses_intersect_with_several_files_and_json() {
        let cli = Cli::parse_from([
            "x",
            "cpu-features",
            "--intersect",
            "a.json",
            "b.json",
            "--json",
        ]);
        let Cmd::CpuFeatures(args) = cli.cmd else {
            panic!()
        };
        assert!(args.json);
        assert_eq!(
            args.intersect,
            [PathBuf::from("a.json"), PathBuf::from("b.json")]
        );
        let cli = Cli::parse_from(["x", "cpu-check", "m.json"]);
        assert!(matches!(cli.cmd, Cmd::CpuCheck(a) if a.file == Path::new("m.json")));
    }

    #[test]
    fn loads_a_feature_set_or_a_manifest_source_cpu() {
        let d = scratch("load");
        let set = r#"{"vendor":"GenuineIntel","family":6,"model":85,"stepping":7,
            "cache_line_size":64,"features":["sse2","fpu"]}"#;
        let a = load_cpu_info(&write(&d, "a.json", set)).unwrap();
        assert_eq!(a.features, ["fpu", "sse2"]);
        let manifest =
            format!(r#"{{"format_version":"1.0","source":{{"node_name":"n","cpu":{set}}}}}"#);
        assert_eq!(load_cpu_info(&write(&d, "m.json", &manifest)).unwrap(), a);
        let empty = r#"{"source":{"node_name":"n","cpu":null}}"#;
        let err = load_cpu_info(&write(&d, "e.json", empty)).unwrap_err();
        assert!(err.to_string().contains("records no CPU feature set"));
        let other = load_cpu_info(&write(&d, "o.json", "{}")).unwrap_err();
        assert!(other.to_string().contains("neither a CPU feature set"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn cpu_check_passes_for_this_host_and_fails_for_an_impossible_set() {
        let host = podsnap_cpu::host();
        let missing = host
            .as_ref()
            .err()
            .map(|e| format!("this host's CPU features cannot be read: {e}"));
        if !podsnap_testkit::require_that("cpu_check", missing) {
            return;
        }
        let host = host.unwrap();
        let d = scratch("check");
        let same = write(&d, "h.json", &podsnap_cpu::to_json_pretty(&host));
        assert_eq!(run_cpu_check(CpuCheckArgs { file: same }).unwrap(), 0);
        let mut more = host.clone();
        more.features.push("not_a_real_feature".into());
        more.cache_line_size += 1;
        let more = write(&d, "m.json", &podsnap_cpu::to_json_pretty(&more));
        assert_eq!(
            run_cpu_check(CpuCheckArgs { file: more }).unwrap(),
            EXIT_INCOMPATIBLE
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
