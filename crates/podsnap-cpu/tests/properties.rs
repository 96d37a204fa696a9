//! Properties of gVisor's rule over arbitrary feature sets.

use std::collections::BTreeSet;

use podsnap_cpu::features::FEATURES;
use podsnap_cpu::{annotation_value, apply_allow_list, check, intersect, CpuInfo};
use proptest::prelude::*;

fn set(names: BTreeSet<usize>, cache_line_size: u32) -> CpuInfo {
    let mut features: Vec<String> = names
        .iter()
        .map(|&i| FEATURES[i].name.to_string())
        .collect();
    features.sort();
    CpuInfo {
        vendor: "GenuineIntel".into(),
        family: 6,
        model: 85,
        stepping: 7,
        cache_line_size,
        features,
    }
}

fn names() -> impl Strategy<Value = BTreeSet<usize>> {
    prop::collection::btree_set(0..FEATURES.len(), 0..FEATURES.len())
}

fn cache_line() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![32u32, 64, 128])
}

proptest! {
    #[test]
    fn a_set_restores_on_any_superset(saved in names(), extra in names(), line in cache_line()) {
        let host: BTreeSet<usize> = saved.union(&extra).copied().collect();
        prop_assert_eq!(check(&set(saved, line), &set(host, line)), Ok(()));
    }

    #[test]
    fn a_set_never_restores_where_one_of_its_features_is_missing(
        saved in names().prop_filter("non-empty", |s| !s.is_empty()),
        extra in names(),
        pick in any::<prop::sample::Index>(),
        line in cache_line(),
    ) {
        let gone = *pick.get(&saved.iter().copied().collect::<Vec<_>>());
        let mut host: BTreeSet<usize> = saved.union(&extra).copied().collect();
        host.remove(&gone);
        let err = check(&set(saved, line), &set(host, line)).unwrap_err();
        prop_assert_eq!(err.missing, vec![FEATURES[gone].name.to_string()]);
        prop_assert_eq!(err.cache_line, None);
    }

    #[test]
    fn a_different_cache_line_is_always_refused(
        saved in names(), extra in names(), a in cache_line(), b in cache_line(),
    ) {
        prop_assume!(a != b);
        let host: BTreeSet<usize> = saved.union(&extra).copied().collect();
        let err = check(&set(saved, a), &set(host, b)).unwrap_err();
        prop_assert!(err.missing.is_empty());
        prop_assert!(err.cache_line.is_some());
    }

    #[test]
    fn missing_is_exactly_saved_minus_host(saved in names(), host in names(), line in cache_line()) {
        let want: Vec<String> = saved.difference(&host).map(|&i| FEATURES[i].name.to_string()).collect();
        match check(&set(saved, line), &set(host, line)) {
            Ok(()) => prop_assert!(want.is_empty()),
            Err(e) => prop_assert_eq!(e.missing, want),
        }
    }

    #[test]
    fn intersection_restores_on_every_member(
        sets in prop::collection::vec(names(), 1..5), line in cache_line(),
    ) {
        let sets: Vec<CpuInfo> = sets.into_iter().map(|s| set(s, line)).collect();
        let common = intersect(&sets).unwrap();
        for s in &sets {
            prop_assert_eq!(check(&common, s), Ok(()));
        }
    }

    #[test]
    fn allow_list_result_is_a_subset_of_host_and_list(
        host in names(), list in names(), line in cache_line(),
    ) {
        let host = set(host, line);
        let list = set(list, line);
        let out = apply_allow_list(&host, &annotation_value(&list)).unwrap();
        prop_assert_eq!(check(&out, &host), Ok(()));
        prop_assert_eq!(check(&out, &list), Ok(()));
    }

    #[test]
    fn json_round_trips(saved in names(), line in cache_line()) {
        let s = set(saved, line);
        prop_assert_eq!(podsnap_cpu::from_json(&podsnap_cpu::to_json_pretty(&s)).unwrap(), s);
    }
}
