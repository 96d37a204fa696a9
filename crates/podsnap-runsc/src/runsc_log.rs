//! Writing the wrapper's own failure into runsc's `--log` file, in runsc's format.
//!
//! containerd's runc shim reports a failed `create` by reading the last `"level":"error"`
//! line of the runtime's JSON log (`--log <bundle>/log.json --log-format json`); without such
//! a line the user sees only "unable to retrieve OCI runtime error". So the wrapper's one
//! line goes there as well as to stderr.

use std::io::Write;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::args::Invocation;

/// The log line for `msg` in runsc's `format` ("json", "json-k8s" or "text").
pub fn line(format: Option<&str>, msg: &str, now: OffsetDateTime, pid: u32) -> String {
    let rfc3339 = now.format(&Rfc3339).unwrap_or_default();
    match format {
        Some("json") => {
            serde_json::json!({"msg": msg, "level": "error", "time": rfc3339}).to_string()
        }
        Some("json-k8s") => {
            serde_json::json!({"log": format!("{msg}\n"), "stream": "stderr", "time": rfc3339})
                .to_string()
        }
        _ => {
            // glog style, like runsc's text format: Lmmdd hh:mm:ss.uuuuuu pid file:line] msg
            let ts = now
                .format(format_description!(
                    "[month][day] [hour]:[minute]:[second].[subsecond digits:6]"
                ))
                .unwrap_or_default();
            format!("E{ts} {pid:>7} podsnap-runsc] {msg}")
        }
    }
}

/// Appends `msg` to the invocation's `--log` file, if it has one. Best effort: the message
/// also goes to stderr.
pub fn append(inv: &Invocation, msg: &str) {
    let Some(path) = &inv.log else { return };
    let text = line(
        inv.log_format.as_deref(),
        msg,
        OffsetDateTime::now_utc(),
        std::process::id(),
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{text}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_runsc() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let j: serde_json::Value =
            serde_json::from_str(&line(Some("json"), "it broke", now, 42)).unwrap();
        assert_eq!(j["msg"], "it broke");
        assert_eq!(j["level"], "error");
        assert_eq!(j["time"], "2023-11-14T22:13:20Z");
        let k: serde_json::Value =
            serde_json::from_str(&line(Some("json-k8s"), "it broke", now, 42)).unwrap();
        assert_eq!(k["log"], "it broke\n");
        assert_eq!(
            line(None, "it broke", now, 42),
            "E1114 22:13:20.000000      42 podsnap-runsc] it broke"
        );
    }
}
