//! `edgelog demo` as a new user runs it: traffic flows, SIGTERM flushes, DuckDB reads the
//! files it left.

use std::process::Command;
use std::time::Duration;

use edgelog_tests::{TestServer, http_get, stored_ids, wait_until, within};

#[test]
fn the_demo_runs_flushes_on_sigterm_and_duckdb_reads_its_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("demo");
    let demo = TestServer::demo(&data, &["--rate", "3000"], &[])?;
    // Traffic flows (8 s at most): over 5,000 records accepted, and the dashboard has
    // seen a distribution.
    wait_until(within(Duration::from_secs(8)), || {
        let accepted = http_get(&format!("{}/metrics", demo.url()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("edgelog_records_accepted_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let dists = http_get(&demo.dashboard_url("/api/distributions")).unwrap_or_default();
        accepted > 5_000.0 && dists.starts_with("[\"E")
    });
    let readyz = http_get(&format!("{}/readyz", demo.url()));
    let dists = http_get(&demo.dashboard_url("/api/distributions"));
    let stdout = demo.stop()?;
    assert!(stdout.contains("Authorization: Bearer "), "{stdout}");
    assert!(readyz?.contains("\"status\":\"ready\""));
    assert!(
        dists?.starts_with("[\"E"),
        "the dashboard saw no distribution"
    );

    let rows: u32 = stored_ids(&data.join("standard-logs"))?.values().sum();
    assert!(rows > 5_000, "only {rows} rows after 8 s at 3,000/s");
    let glob = data
        .join("standard-logs/**/*.parquet")
        .display()
        .to_string();
    let script = format!(
        "import duckdb\n\
         con = duckdb.connect()\n\
         con.sql(\"SET enable_progress_bar = false\")\n\
         print(con.sql(\"SELECT count(*), count(DISTINCT DistributionId), typeof(any_value(sc_status)), typeof(any_value(timestamp)) FROM read_parquet('{glob}', hive_partitioning=true)\").fetchone())"
    );
    let out = Command::new("python3").args(["-c", &script]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "DuckDB could not read the demo's files (is the Python duckdb package installed? scripts/install-test-deps.sh does it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.trim(),
        format!("({rows}, 3, 'INTEGER', 'TIMESTAMP WITH TIME ZONE')")
    );
    Ok(())
}
