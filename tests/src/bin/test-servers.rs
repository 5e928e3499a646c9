//! Starts the test servers (garage for S3, tansu for Kafka) on loopback for benchmarks and
//! manual runs, prints how to reach them as shell `export` lines, and stops them when its
//! standard input closes.
//!
//! ```sh
//! coproc SERVERS { cargo run -q -p edgelog-tests --bin test-servers; }
//! ```

use std::io::{BufRead, Write};

use edgelog_tests::servers::{BUCKET, Garage, S3_KEY_ID, S3_SECRET, Tansu};

fn main() -> anyhow::Result<()> {
    let garage = Garage::start()?;
    let tansu = Tansu::start()?;
    tansu.create_topic("edgelog-realtime", 3)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "export EDGELOG_TEST_S3_ENDPOINT={}", garage.endpoint())?;
    writeln!(out, "export EDGELOG_TEST_S3_PORT={}", garage.s3_port)?;
    writeln!(out, "export EDGELOG_TEST_S3_BUCKET={BUCKET}")?;
    writeln!(out, "export EDGELOG_TEST_S3_KEY_ID={S3_KEY_ID}")?;
    writeln!(out, "export EDGELOG_TEST_S3_SECRET={S3_SECRET}")?;
    writeln!(out, "export EDGELOG_TEST_KAFKA={}", tansu.bootstrap())?;
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    // Until whoever started us closes our input; dropping the servers stops them.
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}
