//! podsnapd's `/metrics` exposition as parsed families and samples, for assertions on types,
//! label sets and values instead of matching text lines. The exposition is OpenMetrics text
//! (what prometheus-client writes); it is parsed by a conforming OpenMetrics parser, so a
//! malformed exposition fails the test that reads it.
//!
//! Lookups name a family (`podsnap_operations`, without the `_total` sample suffix) and its
//! complete label set; a family of another type than asked for is a test failure.

use openmetrics_parser::{
    HistogramValue, MetricFamily, MetricsExposition, OpenMetricsType, OpenMetricsValue,
};

type Family = MetricFamily<OpenMetricsType, OpenMetricsValue>;

/// A parsed exposition.
#[derive(Debug)]
pub struct Exposition {
    text: String,
    parsed: MetricsExposition<OpenMetricsType, OpenMetricsValue>,
}

/// The type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Other,
}

impl Exposition {
    /// Parses OpenMetrics text; panics (with the text) if it is not valid.
    ///
    /// openmetrics-parser 0.5 folds the descriptors of consecutive families that have no
    /// samples into one family (its grammar takes `metricdescriptor+` greedily), and a fresh
    /// registry is all such families. So each family's block (its descriptors and samples) is
    /// parsed as an exposition of its own, and a family may appear in only one block.
    pub fn parse(text: &str) -> Exposition {
        let invalid =
            |why: String| -> ! { panic!("invalid OpenMetrics exposition ({why}):\n{text}") };
        let body = text
            .strip_suffix("# EOF\n")
            .or_else(|| text.strip_suffix("# EOF"))
            .unwrap_or_else(|| invalid("it does not end with # EOF".into()));
        let mut parsed = MetricsExposition::new();
        for block in family_blocks(body) {
            let one =
                openmetrics_parser::openmetrics::parse_openmetrics(&format!("{block}# EOF\n"))
                    .unwrap_or_else(|e| invalid(format!("{e:?}")));
            for (name, family) in one.families {
                if parsed.families.insert(name.clone(), family).is_some() {
                    invalid(format!("family {name} appears twice"));
                }
            }
        }
        Exposition {
            text: text.to_string(),
            parsed,
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

    /// The exposition text, for failure messages.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The names of every family.
    pub fn family_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.parsed.families.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The type of `family`, `None` if it is not exported.
    pub fn kind(&self, family: &str) -> Option<Kind> {
        self.parsed
            .families
            .get(family)
            .map(|f| match f.family_type {
                OpenMetricsType::Counter => Kind::Counter,
                OpenMetricsType::Gauge => Kind::Gauge,
                OpenMetricsType::Histogram => Kind::Histogram,
                _ => Kind::Other,
            })
    }

    /// The label names of `family`'s samples, sorted; empty for a family without samples.
    pub fn label_names(&self, family: &str) -> Vec<String> {
        let f = self.family(family, None);
        let mut names: Vec<String> = f
            .iter_samples()
            .next()
            .map(|s| {
                s.get_labelset()
                    .expect("a parsed sample has label names")
                    .iter_names()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        names.sort_unstable();
        names
    }

    /// Every label set of `family`'s samples, each sorted by name.
    pub fn label_sets(&self, family: &str) -> Vec<Vec<(String, String)>> {
        self.family(family, None)
            .iter_samples()
            .map(|s| {
                let mut set: Vec<(String, String)> = s
                    .get_labelset()
                    .expect("a parsed sample has label names")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                set.sort_unstable();
                set
            })
            .collect()
    }

    /// The counter `family`'s total for exactly `labels`; `None` if no sample has that label set.
    pub fn counter(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.sample(family, OpenMetricsType::Counter, labels)? {
            OpenMetricsValue::Counter(c) => Some(c.value.as_f64()),
            other => panic!("{family}: a counter family with a {other:?} sample"),
        }
    }

    /// The gauge `family`'s value for exactly `labels`.
    pub fn gauge(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.sample(family, OpenMetricsType::Gauge, labels)? {
            OpenMetricsValue::Gauge(n) => Some(n.as_f64()),
            other => panic!("{family}: a gauge family with a {other:?} sample"),
        }
    }

    /// The histogram `family`'s buckets, sum and count for exactly `labels`.
    pub fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> Option<&HistogramValue> {
        match self.sample(family, OpenMetricsType::Histogram, labels)? {
            OpenMetricsValue::Histogram(h) => Some(h),
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

    fn family(&self, family: &str, kind: Option<OpenMetricsType>) -> &Family {
        let f = self.parsed.families.get(family).unwrap_or_else(|| {
            panic!(
                "no metric family {family:?}; families: {:?}",
                self.family_names()
            )
        });
        if let Some(kind) = kind {
            assert_eq!(
                f.family_type, kind,
                "{family} is a {} family, not a {kind}",
                f.family_type
            );
        }
        f
    }

    fn sample(
        &self,
        family: &str,
        kind: OpenMetricsType,
        labels: &[(&str, &str)],
    ) -> Option<&OpenMetricsValue> {
        let f = self.family(family, Some(kind));
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort_unstable();
        f.iter_samples()
            .find(|s| {
                let set = s.get_labelset().expect("a parsed sample has label names");
                let mut have: Vec<(&str, &str)> =
                    set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                have.sort_unstable();
                have == want
            })
            .map(|s| &s.value)
    }
}

/// Cuts an exposition body into family blocks: a descriptor (`# HELP`, `# TYPE`, `# UNIT`)
/// starts a new block when it names another family than the current block's descriptors, or
/// follows samples.
fn family_blocks(body: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut block = String::new();
    let mut name: Option<&str> = None;
    let mut samples = false;
    for line in body.split_inclusive('\n') {
        let descriptor = ["# HELP ", "# TYPE ", "# UNIT "]
            .iter()
            .find_map(|kw| line.strip_prefix(kw))
            .map(|rest| rest.split([' ', '\n']).next().unwrap_or_default());
        match descriptor {
            Some(d) => {
                if samples || name.is_some_and(|n| n != d) {
                    blocks.push(std::mem::take(&mut block));
                    samples = false;
                }
                name = Some(d);
            }
            None => samples = true,
        }
        block.push_str(line);
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
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
    #[should_panic(expected = "invalid OpenMetrics")]
    fn a_malformed_exposition_fails() {
        Exposition::parse("# TYPE jobs counter\njobs_total{op=\"a\" 3\n# EOF\n");
    }
}
