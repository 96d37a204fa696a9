//! The one thing the wrapper reads from an OCI bundle: the restore annotation.

use std::path::Path;

/// The annotation that asks for a restore: `podsnap.dev/restore-from=<snapshot id>`.
pub const RESTORE_ANNOTATION: &str = "podsnap.dev/restore-from";

/// Why the annotation could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid OCI config: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("annotation {RESTORE_ANNOTATION} in {path} is empty")]
    Empty { path: String },
}

#[derive(serde::Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// The snapshot id in `<bundle>/config.json`'s annotations, if the annotation is there.
pub fn restore_from(bundle: &Path) -> Result<Option<String>, SpecError> {
    let path = bundle.join("config.json");
    let shown = path.display().to_string();
    let bytes = std::fs::read(&path).map_err(|source| SpecError::Read {
        path: shown.clone(),
        source,
    })?;
    let spec: Spec = serde_json::from_slice(&bytes).map_err(|source| SpecError::Parse {
        path: shown.clone(),
        source,
    })?;
    match spec
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTORE_ANNOTATION))
    {
        None => Ok(None),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
            Ok(Some(s.trim().to_string()))
        }
        Some(_) => Err(SpecError::Empty { path: shown }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_restore_annotation() {
        let cases: &[(&str, Result<Option<&str>, &str>)] = &[
            (r#"{"ociVersion":"1.0.2"}"#, Ok(None)),
            (r#"{"annotations":null}"#, Ok(None)),
            (
                r#"{"annotations":{"io.kubernetes.cri.container-type":"container"}}"#,
                Ok(None),
            ),
            (
                r#"{"annotations":{"podsnap.dev/restore-from":"snap-1"}}"#,
                Ok(Some("snap-1")),
            ),
            (
                r#"{"annotations":{"podsnap.dev/restore-from":" snap-2\n"}}"#,
                Ok(Some("snap-2")),
            ),
            (
                r#"{"annotations":{"podsnap.dev/restore-from":""}}"#,
                Err("is empty"),
            ),
            (
                r#"{"annotations":{"podsnap.dev/restore-from":7}}"#,
                Err("is empty"),
            ),
            (r#"{"annotations":"#, Err("not a valid OCI config")),
        ];
        for (json, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("config.json"), json).unwrap();
            match (restore_from(dir.path()), want) {
                (Ok(got), Ok(w)) => assert_eq!(got.as_deref(), *w, "{json}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{json}: {e}"),
                (got, want) => panic!("{json}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn missing_config_json_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            restore_from(dir.path()),
            Err(SpecError::Read { .. })
        ));
    }
}
