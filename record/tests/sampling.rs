//! The sampler: rate accuracy, determinism, subsets.

use edgelog_record::{SamplingConfig, derive_request_id, keep, sample_point};
use proptest::prelude::*;

fn ids(n: u64) -> impl Iterator<Item = String> {
    (0..n).map(|i| derive_request_id(b"sampling-test", i))
}

#[test]
fn ten_percent_of_a_million_is_within_one_percent_and_a_subset_of_fifty() {
    let (mut ten, mut fifty) = (0u64, 0u64);
    for id in ids(1_000_000) {
        let k10 = keep(&id, 10.0);
        let k50 = keep(&id, 50.0);
        assert!(!k10 || k50, "{id} kept at 10 % but not at 50 %");
        ten += u64::from(k10);
        fifty += u64::from(k50);
    }
    assert!((99_000..=101_000).contains(&ten), "10 % kept {ten}");
    assert!((495_000..=505_000).contains(&fifty), "50 % kept {fifty}");
}

#[test]
fn decisions_never_change_across_versions() {
    // Golden values: if these move, every deployed collector disagrees with the new one.
    assert_eq!(
        sample_point("SOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ=="),
        GOLDEN_POINT
    );
    assert!(keep("anything", 100.0));
    assert!(!keep("anything", 0.0));
}

const GOLDEN_POINT: u64 = 17_508_750_288_752_115_024;

#[test]
fn per_distribution_rates_override_the_default() {
    let cfg: SamplingConfig = serde_json::from_str(
        r#"{"default":{"standard":100,"realtime":10},"distributions":{"E2":{"realtime":25}}}"#,
    )
    .expect("valid config");
    cfg.validate(&["standard", "realtime"])
        .expect("rates in range");
    assert_eq!(cfg.rate("E1", "realtime"), 10.0);
    assert_eq!(cfg.rate("E2", "realtime"), 25.0);
    assert_eq!(cfg.rate("E2", "standard"), 100.0);
    let bad: SamplingConfig =
        serde_json::from_str(r#"{"default":{"standard":101}}"#).expect("parses");
    assert!(
        bad.validate(&["standard", "realtime"])
            .expect_err("101 % is out of range")
            .contains("sampling.default.standard")
    );
    let typo: SamplingConfig =
        serde_json::from_str(r#"{"distributions":{"E2":{"realtme":5}}}"#).expect("parses");
    let e = typo
        .validate(&["standard", "realtime"])
        .expect_err("no sink is named realtme");
    assert!(e.contains("sampling.distributions.E2.realtme"), "{e}");
}

#[test]
fn a_distribution_table_overrides_only_the_sinks_it_names() {
    let cfg: SamplingConfig = serde_json::from_str(
        r#"{"default":{"standard":50,"realtime":10},"distributions":{"E2":{"realtime":25}}}"#,
    )
    .expect("valid config");
    assert_eq!(cfg.rate("E2", "standard"), 50.0);
    assert_eq!(cfg.rate("E2", "realtime"), 25.0);
    assert_eq!(
        cfg.rate("E1", "audit"),
        100.0,
        "a sink without a rate gets every record"
    );
}

proptest! {
    #[test]
    fn a_smaller_rate_is_a_subset(id in "[A-Za-z0-9_=-]{1,60}", a in 0.0f64..=100.0, b in 0.0f64..=100.0) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(!keep(&id, lo) || keep(&id, hi));
    }

    #[test]
    fn the_same_id_gets_the_same_decision(id in ".{0,80}", rate in 0.0f64..=100.0) {
        prop_assert_eq!(keep(&id, rate), keep(&id.clone(), rate));
    }
}
