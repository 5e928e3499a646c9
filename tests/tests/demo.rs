//! `edgelog demo` as a new user runs it: traffic flows, SIGTERM flushes, DuckDB reads the
//! files it left.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgelog_tests::{binary, free_port, http_get, signal, stored_ids};

#[test]
fn the_demo_runs_flushes_on_sigterm_and_duckdb_reads_its_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("demo");
    let (ingest, dash) = (free_port(), free_port());
    let mut child = Command::new(binary())
        .args(["demo", "--rate", "3000", "--data-dir"])
        .arg(&data)
        .args([
            "--listen",
            &format!("127.0.0.1:{ingest}"),
            "--dashboard-listen",
            &format!("127.0.0.1:{dash}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(8));
    let readyz = http_get(&format!("http://127.0.0.1:{ingest}/readyz"));
    let dists = http_get(&format!("http://127.0.0.1:{dash}/api/distributions"));
    signal(&child, "TERM")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        anyhow::ensure!(Instant::now() < deadline, "demo did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)?;
    assert!(status.success(), "{stdout}");
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
