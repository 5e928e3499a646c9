//! The sampler a sink is given decides exactly as the configuration says, for every sink
//! name and distribution: a distribution's table overrides only the sinks it names.

use std::sync::Arc;

use edgelog_collector::{Entry, Sampler};
use edgelog_edge::{ErrorMix, Generator};
use edgelog_record::SamplingConfig;

#[test]
fn a_sink_gets_exactly_what_the_configuration_keeps_for_its_name() {
    let cfg: SamplingConfig = serde_json::from_str(
        r#"{"default":{"audit":50,"realtime":1},"distributions":{"E2":{"realtime":100},"E3":{"audit":0}}}"#,
    )
    .expect("sampling");
    let mut g = Generator::new(4, 3, 2);
    let records: Vec<_> = (0..3000)
        .map(|i| {
            let mut r = g.record(1_764_000_000_000, i % 3, ErrorMix::default());
            r.distribution_id = format!("E{}", i % 3 + 1);
            r
        })
        .collect();
    let entry = Entry {
        seq: 1,
        appended_ms: 0,
        records: Arc::new(records),
    };
    for sink in ["audit", "realtime", "standard"] {
        let mut sampler = Sampler::new(&cfg, sink);
        let batch = sampler.batch(&entry);
        let got: Vec<(usize, f64)> = batch.records().map(|k| (k.index, k.rate)).collect();
        let want: Vec<(usize, f64)> = entry
            .records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                cfg.decide(&r.distribution_id, r.request_id(), sink)
                    .map(|rate| (i, rate))
            })
            .collect();
        assert_eq!(got, want, "sink {sink}");
    }
    // E2 names only realtime: its audit rate is the default's 50 %, not 100 %.
    let mut audit = Sampler::new(&cfg, "audit");
    let e2 = audit
        .batch(&entry)
        .records()
        .filter(|k| k.record.distribution_id == "E2")
        .count();
    assert!((400..600).contains(&e2), "{e2} of 1,000");
}
