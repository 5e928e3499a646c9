//! `edgelog demo --config FILE` uses the file's addresses, data dir and tokens; flags given
//! explicitly win over the file.

use std::process::{Command, Stdio};
use std::time::Duration;

use edgelog_tests::{TOKEN, binary, free_port, http_post, signal, wait_listening};

#[test]
fn demo_takes_the_files_settings_and_explicit_flags_win() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("from-file");
    let (ingest, dash) = (free_port(), free_port());
    let config = dir.path().join("demo.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[collector]\nlisten = \"127.0.0.1:{ingest}\"\ntokens = [\"{TOKEN}\"]\n[dashboard]\nlisten = \"127.0.0.1:{dash}\"\n",
            data.display().to_string()
        ),
    )?;
    let run = |extra: &[&str]| -> anyhow::Result<std::process::Child> {
        Ok(Command::new(binary())
            .current_dir(dir.path())
            .args(["demo", "--no-traffic", "--config"])
            .arg(&config)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?)
    };

    let demo = run(&[])?;
    wait_listening(ingest)?;
    wait_listening(dash)?;
    let body = format!(
        "{{\"timestamp\":{},\"DistributionId\":\"E1\",\"sc-status\":200}}\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    let a = http_post(
        &format!("http://127.0.0.1:{ingest}/v1/records"),
        body.as_bytes(),
    )?;
    assert_eq!(a.status, 200, "the file's token is accepted: {a:?}");
    assert!(data.join("wal").is_dir(), "the file's data dir is used");
    assert!(
        !dir.path().join("edgelog-demo").exists(),
        "the flag's default data dir was used"
    );
    signal(&demo, "TERM")?;
    let out = demo.wait_with_output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(
        !printed.contains(TOKEN),
        "the file's token was printed: {printed}"
    );

    // An explicit flag wins over the file.
    let other = free_port();
    let mut demo = run(&["--listen", &format!("127.0.0.1:{other}")])?;
    wait_listening(other)?;
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ingest)).is_err(),
        "still listening on the file's address"
    );
    signal(&demo, "TERM")?;
    assert!(demo.wait()?.success());
    Ok(())
}
