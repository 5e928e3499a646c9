//! AWS's documented example log, replayed by `edgelog edge --replay`, lands in Parquet with
//! the documented values and real types.

use std::io::Write;

use arrow_array::{
    Array, Float64Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, TimeUnit};
use edgelog_tests::{ServerConfig, TestServer, parquet_files, read_parquet, run_edge};

const EXAMPLE: &[u8] =
    include_bytes!("../../record/testdata/EMLARXS9EXAMPLE.2019-12-04-21.RT4KCN4SGK9.log");

#[test]
fn the_aws_example_replays_into_typed_parquet() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = TestServer::collector(dir.path(), &ServerConfig::new())?;
    // As CloudFront delivers it: gzip'd, the distribution id in the file name.
    let file = dir
        .path()
        .join("EMLARXS9EXAMPLE.2019-12-04-21.RT4KCN4SGK9.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(EXAMPLE)?;
    std::fs::write(&file, gz.finish()?)?;
    let out = run_edge(&collector.url(), &["--replay", &file.display().to_string()])?;
    assert!(out.contains("records acknowledged: 6"), "{out}");
    assert!(collector.terminate()?, "{}", collector.log_text());

    let files = parquet_files(&dir.path().join("standard-logs"));
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    assert_eq!(files.len(), 2, "{names:?}");
    assert!(
        names[0].contains(
            "standard-logs/DistributionId=EMLARXS9EXAMPLE/year=2019/month=12/day=04/hour=21/"
        ),
        "{names:?}"
    );
    assert!(
        names[1].contains("DistributionId=EMLARXS9EXAMPLE/year=2019/month=12/day=13/hour=22/"),
        "{names:?}"
    );

    let batch = read_parquet(&files[0])?.remove(0);
    let schema = batch.schema();
    let ty = |c: &str| schema.field_with_name(c).map(|f| f.data_type().clone());
    assert_eq!(
        ty("timestamp")?,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    );
    assert_eq!(ty("sc_status")?, DataType::Int32);
    assert_eq!(ty("sc_bytes")?, DataType::Int64);
    assert_eq!(ty("time_taken")?, DataType::Float64);
    assert_eq!(ty("cs_user_agent")?, DataType::Utf8);
    assert!(
        schema.field_with_name("DistributionId").is_err(),
        "partition column repeated in the file"
    );
    let col = |c: &str| {
        batch
            .column_by_name(c)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no column {c}"))
    };
    let ids = col("x_edge_request_id")?;
    let ids = ids
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| anyhow::anyhow!("ids"))?;
    let row = (0..ids.len())
        .find(|&i| ids.value(i) == "SOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ==")
        .ok_or_else(|| anyhow::anyhow!("row"))?;
    let ts = col("timestamp")?;
    assert_eq!(
        ts.as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .map(|a| a.value(row)),
        Some(1_575_493_351_000)
    );
    assert_eq!(
        col("sc_status")?
            .as_any()
            .downcast_ref::<Int32Array>()
            .map(|a| a.value(row)),
        Some(200)
    );
    assert_eq!(
        col("sc_bytes")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.value(row)),
        Some(392)
    );
    assert_eq!(
        col("c_port")?
            .as_any()
            .downcast_ref::<Int32Array>()
            .map(|a| a.value(row)),
        Some(11040)
    );
    assert_eq!(
        col("time_taken")?
            .as_any()
            .downcast_ref::<Float64Array>()
            .map(|a| a.value(row)),
        Some(0.001)
    );
    assert_eq!(
        col("sample_rate")?
            .as_any()
            .downcast_ref::<Float64Array>()
            .map(|a| a.value(row)),
        Some(100.0)
    );
    assert!(col("cs_referer")?.is_null(row));
    let loc = col("x_edge_location")?;
    assert_eq!(
        loc.as_any()
            .downcast_ref::<StringArray>()
            .map(|a| a.value(row)),
        Some("LAX1")
    );
    Ok(())
}
