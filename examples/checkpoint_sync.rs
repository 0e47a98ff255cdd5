//! Replicates a checkpoint directory to S3 with sparkvisor's library: one
//! sync (default) or one every `--interval`. Used by the tests (a real
//! process to kill in the middle of a sync) and the restore benchmark (to
//! seed a replica); also a minimal example of the replication API.
//!
//! ```sh
//! AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… cargo run --example checkpoint_sync -- \
//!     --dir /var/lib/ckpt --uri s3://bucket/prefix --endpoint http://127.0.0.1:8014
//! ```
//! Prints one JSON line per cycle on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sparkvisor::replica::replicate::{ReplicaConfig, Replicator};
use sparkvisor::s3::{Location, S3Settings, Store};

struct Args {
    dir: PathBuf,
    uri: String,
    endpoint: Option<String>,
    region: Option<String>,
    concurrency: usize,
    retain: usize,
    interval: Option<Duration>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        dir: PathBuf::new(),
        uri: String::new(),
        endpoint: None,
        region: None,
        concurrency: 64,
        retain: 10,
        interval: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value()?),
            "--uri" => a.uri = value()?,
            "--endpoint" => a.endpoint = Some(value()?),
            "--region" => a.region = Some(value()?),
            "--concurrency" => a.concurrency = value()?.parse().map_err(|e| format!("{e}"))?,
            "--retain" => a.retain = value()?.parse().map_err(|e| format!("{e}"))?,
            "--interval" => {
                a.interval = Some(humantime::parse_duration(&value()?).map_err(|e| e.to_string())?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.uri.is_empty() || a.dir.as_os_str().is_empty() {
        return Err("usage: checkpoint_sync --dir DIR --uri s3://BUCKET/PREFIX [--endpoint URL] [--region R] [--concurrency N] [--retain N] [--interval 5s]".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("checkpoint_sync: {e}");
            return ExitCode::from(2);
        }
    };
    let location = match Location::parse(&args.uri) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("checkpoint_sync: --uri: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = S3Settings {
        force_path_style: args.endpoint.is_some(),
        endpoint: args.endpoint,
        region: args.region,
        concurrency: args.concurrency,
        static_credentials: None,
    };
    let store = Store::connect(&settings, &location.bucket).await;
    let mut replicator = Replicator::new(
        store,
        ReplicaConfig {
            dir: args.dir,
            location,
            retain: args.retain,
            concurrency: args.concurrency,
        },
    );
    loop {
        let result = replicator.sync_once().await;
        let line = match &result {
            Ok(r) => serde_json::json!({
                "ok": true,
                "outcome": format!("{:?}", r.outcome),
                "files_uploaded": r.files_uploaded,
                "bytes_uploaded": r.bytes_uploaded,
                "objects_deleted": r.objects_deleted,
                "batches": r.batches,
            }),
            Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
        };
        println!("{line}");
        match args.interval {
            Some(i) => tokio::time::sleep(i).await,
            None => {
                return if result.is_ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
        }
    }
}
