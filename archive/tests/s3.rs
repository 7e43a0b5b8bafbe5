//! The archive against a real S3-compatible server (moto, `scripts/s3.sh up`,
//! which `make test` runs first): upload a snapshot and segments, summary,
//! fetch to a seq and a time, a corrupted object refused, prune. The same
//! steps as the file:// unit test (`archive::testkit::exercise`).
#![cfg(feature = "e2e")]

use std::process::Command;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[tokio::test]
async fn s3_archive_round_trip_corruption_and_retention() {
    let st = Command::new(root().join("scripts/s3.sh")).arg("up").status().expect("running scripts/s3.sh up");
    assert!(st.success(), "scripts/s3.sh up failed");
    let port = std::env::var("S3_PORT").unwrap_or_else(|_| "9788".into());
    let bucket = std::env::var("S3_BUCKET").unwrap_or_else(|_| "rideshare-test".into());
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    // A prefix of its own per run: the bucket outlives runs.
    let prefix = format!("archive-e2e/{}-{}", std::process::id(), wire::now_ms());
    let a = archive::Archive::open(&format!("s3://{bucket}/{prefix}")).unwrap();
    let work = std::env::temp_dir().join(format!("archive-s3-{}", std::process::id()));
    archive::testkit::exercise(&a, &work).await;

    // A bucket that does not exist is a clear error, not a hang.
    let missing = archive::Archive::open("s3://no-such-bucket-here/x").unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(60), missing.summary()).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("object store"), "{e}");
}
