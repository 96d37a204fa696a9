//! podsnapd's `/metrics` exposition as parsed families and samples, for assertions on types,
//! label sets and values instead of matching text lines. The exposition is OpenMetrics text
//! (what prometheus-client writes), parsed here strictly enough that a malformed exposition
//! fails the test that reads it: every line must be a descriptor, a sample of the family
//! declared just before it (with a suffix its type allows), or the final `# EOF`; label sets
//! and values must parse; a family may be declared once.
//!
//! Lookups name a family (`podsnap_operations`, without the `_total` sample suffix) and its
//! complete label set; a family of another type than asked for is a test failure.

use std::collections::BTreeMap;

/// Label name/value pairs, sorted by name.
type LabelSet = Vec<(String, String)>;

/// The type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Other,
}

impl Kind {
    fn parse(t: &str) -> Option<Kind> {
        Some(match t {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "unknown" | "info" | "stateset" | "summary" | "gaugehistogram" => Kind::Other,
            _ => return None,
        })
    }

    /// The sample name suffixes this type allows.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Kind::Counter => &["_total", "_created"],
            Kind::Gauge => &[""],
            Kind::Histogram => &["_bucket", "_count", "_sum", "_created"],
            Kind::Other => &[
                "", "_total", "_info", "_count", "_sum", "_created", "_bucket",
            ],
        }
    }
}

/// One histogram bucket: observations at or below `upper_bound`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    pub upper_bound: f64,
    pub count: f64,
}

/// A histogram's samples for one label set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<Bucket>,
    pub sum: Option<f64>,
    pub count: Option<u64>,
}

#[derive(Clone, Debug)]
enum Value {
    Number(f64),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Family {
    kind: Kind,
    /// Label set (sorted by name) -> value.
    samples: BTreeMap<LabelSet, Value>,
}

/// A parsed exposition.
#[derive(Debug)]
pub struct Exposition {
    text: String,
    families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Parses OpenMetrics text; panics (with the text) if it is not valid.
    pub fn parse(text: &str) -> Exposition {
        let invalid = |line: usize, why: String| -> ! {
            panic!("invalid OpenMetrics exposition (line {line}: {why}):\n{text}")
        };
        let body = text
            .strip_suffix("# EOF\n")
            .or_else(|| text.strip_suffix("# EOF"))
            .unwrap_or_else(|| invalid(0, "it does not end with # EOF".into()));
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        // The family whose descriptors or samples came last, and its declared type.
        let mut current: Option<(String, Option<Kind>)> = None;
        for (n, line) in body.lines().enumerate() {
            let n = n + 1;
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let arg = parts.next();
                if !valid_name(name) {
                    invalid(n, format!("bad metric name {name:?}"));
                }
                if current.as_ref().is_none_or(|(c, _)| c != name) {
                    if families.contains_key(name) {
                        invalid(n, format!("family {name} appears twice"));
                    }
                    current = Some((name.to_string(), None));
                }
                let cur = current.as_mut().expect("set above");
                match (kw, arg) {
                    ("TYPE", Some(t)) => {
                        let kind =
                            Kind::parse(t).unwrap_or_else(|| invalid(n, format!("type {t:?}")));
                        if cur.1.replace(kind).is_some() {
                            invalid(n, format!("{name} has two TYPE lines"));
                        }
                        families.insert(
                            name.to_string(),
                            Family {
                                kind,
                                samples: BTreeMap::new(),
                            },
                        );
                    }
                    ("HELP", _) | ("UNIT", _) => {}
                    _ => invalid(n, format!("unknown descriptor {line:?}")),
                }
                continue;
            }
            let Some((family, Some(kind))) = current.clone() else {
                invalid(n, "a sample before any # TYPE".into());
            };
            let (name, labels, value) = parse_sample(line).unwrap_or_else(|why| invalid(n, why));
            let suffix = name
                .strip_prefix(family.as_str())
                .filter(|sfx| kind.suffixes().contains(sfx))
                .unwrap_or_else(|| invalid(n, format!("sample {name} outside family {family}")));
            let f = families
                .get_mut(&family)
                .expect("declared by its TYPE line");
            add_sample(f, suffix, labels, value).unwrap_or_else(|why| invalid(n, why));
        }
        Exposition {
            text: text.to_string(),
            families,
        }
    }

    /// Parses the body of a raw HTTP/1.1 `GET /metrics` response, which must be a 200 with an
    /// OpenMetrics content type.
    pub fn from_http_response(response: &str) -> Exposition {
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP response:\n{response}"));
        let mut lines = head.lines();
        let status = lines.next().unwrap_or_default();
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "/metrics answered {status:?}:\n{response}"
        );
        assert!(
            lines.any(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("content-type:") && l.contains("application/openmetrics-text")
            }),
            "/metrics is not OpenMetrics text:\n{head}"
        );
        Exposition::parse(body)
    }

    /// Scrapes `http://127.0.0.1:{port}/metrics` (one HTTP/1.1 request) and parses it as
    /// [`Exposition::from_http_response`] does.
    pub fn scrape(port: u16) -> Exposition {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connecting to the metrics port {port}: {e}"));
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        Exposition::from_http_response(&out)
    }

    /// The exposition text, for failure messages.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The names of every family, sorted.
    pub fn family_names(&self) -> Vec<&str> {
        self.families.keys().map(String::as_str).collect()
    }

    /// The type of `family`, `None` if it is not exported.
    pub fn kind(&self, family: &str) -> Option<Kind> {
        self.families.get(family).map(|f| f.kind)
    }

    /// The label names of `family`'s samples, sorted; empty for a family without samples.
    pub fn label_names(&self, family: &str) -> Vec<String> {
        self.family(family, None)
            .samples
            .keys()
            .next()
            .map(|set| set.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }

    /// Every label set of `family`'s samples, each sorted by name.
    pub fn label_sets(&self, family: &str) -> Vec<Vec<(String, String)>> {
        self.family(family, None).samples.keys().cloned().collect()
    }

    /// The counter `family`'s total for exactly `labels`; `None` if no sample has that label set.
    pub fn counter(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.sample(family, Kind::Counter, labels)? {
            Value::Number(v) => Some(*v),
            other => panic!("{family}: a counter family with a {other:?} sample"),
        }
    }

    /// The gauge `family`'s value for exactly `labels`.
    pub fn gauge(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.sample(family, Kind::Gauge, labels)? {
            Value::Number(v) => Some(*v),
            other => panic!("{family}: a gauge family with a {other:?} sample"),
        }
    }

    /// The histogram `family`'s buckets, sum and count for exactly `labels`.
    pub fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> Option<&Histogram> {
        match self.sample(family, Kind::Histogram, labels)? {
            Value::Histogram(h) => Some(h),
            other => panic!("{family}: a histogram family with a {other:?} sample"),
        }
    }

    /// The number of observations of the histogram `family` for exactly `labels`.
    pub fn histogram_count(&self, family: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let h = self.histogram(family, labels)?;
        Some(h.count.unwrap_or_else(|| {
            panic!(
                "{family} {labels:?}: a histogram without _count:\n{}",
                self.text
            )
        }))
    }

    fn family(&self, family: &str, kind: Option<Kind>) -> &Family {
        let f = self.families.get(family).unwrap_or_else(|| {
            panic!(
                "no metric family {family:?}; families: {:?}",
                self.family_names()
            )
        });
        if let Some(kind) = kind {
            assert_eq!(
                f.kind,
                kind,
                "{family} is a {:?} family, not a {}",
                f.kind,
                format!("{kind:?}").to_lowercase()
            );
        }
        f
    }

    fn sample(&self, family: &str, kind: Kind, labels: &[(&str, &str)]) -> Option<&Value> {
        let f = self.family(family, Some(kind));
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort_unstable();
        f.samples.get(&want)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",...} value [timestamp] [# exemplar]` -> name, labels sorted by name, value.
fn parse_sample(line: &str) -> Result<(String, LabelSet, f64), String> {
    let line = line.split(" # ").next().unwrap_or(line);
    let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad sample name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let close = loop {
            let (i, c) = chars.next().ok_or("unterminated label set")?;
            match c {
                '}' if key.is_empty() => break i,
                '=' => {
                    if !valid_name(&key) {
                        return Err(format!("bad label name {key:?}"));
                    }
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err(format!("label {key} without a quoted value"));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().ok_or("unterminated label value")?.1 {
                            '"' => break,
                            '\\' => match chars.next().ok_or("dangling escape")?.1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => return Err(format!("bad escape \\{c}")),
                            },
                            c => value.push(c),
                        }
                    }
                    if labels.iter().any(|(k, _): &(String, String)| *k == key) {
                        return Err(format!("label {key} twice"));
                    }
                    labels.push((std::mem::take(&mut key), value));
                    match chars.next().ok_or("unterminated label set")? {
                        (_, ',') => {}
                        (i, '}') => break i,
                        (_, c) => return Err(format!("{c:?} after a label value")),
                    }
                }
                c => key.push(c),
            }
        };
        rest = &inner[close + 1..];
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = fields.next().unwrap_or_default();
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<f64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields after the timestamp".into());
    }
    labels.sort_unstable();
    Ok((name.to_string(), labels, value))
}

fn add_sample(
    f: &mut Family,
    suffix: &str,
    mut labels: Vec<(String, String)>,
    value: f64,
) -> Result<(), String> {
    if suffix == "_created" {
        return Ok(());
    }
    if f.kind != Kind::Histogram {
        return match f.samples.insert(labels, Value::Number(value)) {
            None => Ok(()),
            Some(_) => Err("the same label set twice".into()),
        };
    }
    let le = match labels.iter().position(|(k, _)| k == "le") {
        Some(i) if suffix == "_bucket" => Some(labels.remove(i).1),
        None if suffix != "_bucket" => None,
        _ => return Err(format!("le on a {suffix} sample, or a bucket without le")),
    };
    let entry = f
        .samples
        .entry(labels)
        .or_insert_with(|| Value::Histogram(Histogram::default()));
    let Value::Histogram(h) = entry else {
        unreachable!("a histogram family holds histograms")
    };
    match (suffix, le) {
        ("_bucket", Some(le)) => {
            let upper_bound = match le.as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().map_err(|_| format!("bad le {v:?}"))?,
            };
            if h.buckets
                .last()
                .is_some_and(|b| b.upper_bound >= upper_bound)
            {
                return Err("buckets out of order".into());
            }
            h.buckets.push(Bucket {
                upper_bound,
                count: value,
            });
        }
        ("_sum", None) => h.sum = Some(value),
        ("_count", None) if value >= 0.0 && value.fract() == 0.0 => h.count = Some(value as u64),
        _ => return Err(format!("bad histogram sample {suffix} {value}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP jobs Jobs.
# TYPE jobs counter
jobs_total{op=\"a\",outcome=\"ok\"} 3
jobs_total{op=\"b\",outcome=\"ok\"} 1
# HELP running Running now.
# TYPE running gauge
running{op=\"a\"} 2
# HELP took Duration.
# TYPE took histogram
took_sum{op=\"a\"} 0.5
took_count{op=\"a\"} 2
took_bucket{le=\"0.1\",op=\"a\"} 1
took_bucket{le=\"+Inf\",op=\"a\"} 2
# EOF
";

    #[test]
    fn samples_are_found_by_family_type_and_exact_label_set() {
        let e = Exposition::parse(TEXT);
        assert_eq!(e.kind("jobs"), Some(Kind::Counter));
        assert_eq!(e.kind("took"), Some(Kind::Histogram));
        assert_eq!(e.kind("nope"), None);
        assert_eq!(
            e.counter("jobs", &[("outcome", "ok"), ("op", "a")]),
            Some(3.0)
        );
        // A subset of the labels is not the label set.
        assert_eq!(e.counter("jobs", &[("op", "a")]), None);
        assert_eq!(e.gauge("running", &[("op", "a")]), Some(2.0));
        assert_eq!(e.histogram_count("took", &[("op", "a")]), Some(2));
        assert_eq!(e.label_names("jobs"), vec!["op", "outcome"]);
        assert_eq!(e.label_sets("jobs").len(), 2);
    }

    #[test]
    fn families_without_samples_keep_their_own_types() {
        let e = Exposition::parse(
            "# HELP a A.\n# TYPE a counter\n# HELP b B.\n# TYPE b histogram\n\
             # HELP c C.\n# TYPE c gauge\nc 1\n# EOF\n",
        );
        assert_eq!(e.family_names(), vec!["a", "b", "c"]);
        assert_eq!(e.kind("a"), Some(Kind::Counter));
        assert_eq!(e.kind("b"), Some(Kind::Histogram));
        assert_eq!(e.gauge("c", &[]), Some(1.0));
        assert!(e.label_names("a").is_empty());
    }

    #[test]
    #[should_panic(expected = "# EOF")]
    fn an_exposition_without_eof_fails() {
        Exposition::parse("# TYPE jobs counter\njobs_total 3\n");
    }

    #[test]
    #[should_panic(expected = "not a gauge")]
    fn asking_for_the_wrong_type_fails() {
        Exposition::parse(TEXT).gauge("jobs", &[("op", "a"), ("outcome", "ok")]);
    }

    #[test]
    fn histograms_and_escaped_label_values_parse() {
        let e = Exposition::parse(TEXT);
        let h = e.histogram("took", &[("op", "a")]).unwrap();
        assert_eq!(h.sum, Some(0.5));
        assert_eq!(h.count, Some(2));
        assert_eq!(
            h.buckets,
            vec![
                Bucket {
                    upper_bound: 0.1,
                    count: 1.0
                },
                Bucket {
                    upper_bound: f64::INFINITY,
                    count: 2.0
                },
            ]
        );
        let e = Exposition::parse("# TYPE info gauge\ninfo{v=\"a\\\"b\\\\c,d\"} 1\n# EOF\n");
        assert_eq!(e.gauge("info", &[("v", "a\"b\\c,d")]), Some(1.0));
    }

    #[test]
    #[should_panic(expected = "outside family")]
    fn a_sample_of_another_family_fails() {
        Exposition::parse("# TYPE jobs counter\nruns_total 3\n# EOF\n");
    }

    #[test]
    #[should_panic(expected = "appears twice")]
    fn a_family_declared_twice_fails() {
        Exposition::parse("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n# EOF\n");
    }

    #[test]
    #[should_panic(expected = "invalid OpenMetrics")]
    fn a_malformed_exposition_fails() {
        Exposition::parse("# TYPE jobs counter\njobs_total{op=\"a\" 3\n# EOF\n");
    }
}
