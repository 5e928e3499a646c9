//! Every collector takes the same sample: two instances at 10 % keep the same ids, and
//! they are a subset of a third at 50 %.

use std::collections::HashSet;

use edgelog_tests::{ServerConfig, TestServer, run_edge, stored_ids};

fn sample(dir: &std::path::Path, rate: u32) -> anyhow::Result<HashSet<String>> {
    let mut c = TestServer::collector(dir, &ServerConfig::new().sample("standard", rate))?;
    run_edge(
        &c.url(),
        &[
            "--total", "20000", "--rate", "0", "--seed", "7", "--batch", "1000",
        ],
    )?;
    assert!(c.terminate()?, "{}", c.log_text());
    Ok(stored_ids(&dir.join("standard-logs"))?
        .into_keys()
        .collect())
}

#[test]
fn collectors_agree_on_the_sample_and_smaller_samples_are_subsets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = sample(&dir.path().join("a"), 10)?;
    let b = sample(&dir.path().join("b"), 10)?;
    let c = sample(&dir.path().join("c"), 50)?;
    assert_eq!(a, b, "two collectors at 10 % kept different records");
    assert!(
        (1_700..=2_300).contains(&a.len()),
        "10 % of 20,000 kept {}",
        a.len()
    );
    assert!(
        (9_300..=10_700).contains(&c.len()),
        "50 % of 20,000 kept {}",
        c.len()
    );
    assert!(
        a.is_subset(&c),
        "the 10 % sample is not inside the 50 % sample"
    );
    Ok(())
}
