//! `edgelog demo --config FILE` uses the file's addresses, data dir and tokens; flags given
//! explicitly win over the file.

use edgelog_tests::{Kind, TOKEN, TestServer, free_port, http_post};

#[test]
fn demo_takes_the_files_settings_and_explicit_flags_win() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("from-file");
    // The file's own addresses: what the test is about, so not port 0.
    let (ingest, dash) = (free_port(), free_port());
    let config = dir.path().join("demo.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[collector]\nlisten = \"127.0.0.1:{ingest}\"\ntokens = [\"{TOKEN}\"]\n[dashboard]\nlisten = \"127.0.0.1:{dash}\"\n",
            data.display().to_string()
        ),
    )?;
    let config = config.display().to_string();
    let run = |extra: &[&str]| -> anyhow::Result<TestServer> {
        let mut args = vec!["demo", "--no-traffic", "--config", &config];
        args.extend(extra);
        TestServer::command(Kind::Demo, dir.path(), &args)
    };

    let demo = run(&[])?;
    assert_eq!(
        (demo.port(), demo.dashboard_port()),
        (ingest, dash),
        "the file's addresses are used"
    );
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
    let printed = demo.stop()?;
    assert!(
        !printed.contains(TOKEN),
        "the file's token was printed: {printed}"
    );

    // An explicit flag wins over the file.
    let mut demo = run(&["--listen", "127.0.0.1:0"])?;
    assert_ne!(demo.port(), ingest);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ingest)).is_err(),
        "still listening on the file's address"
    );
    assert!(demo.terminate()?);
    Ok(())
}
