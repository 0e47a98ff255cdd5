//! Secrets in every shape users write them — Spark conf keys, values with
//! embedded credentials (JDBC, JAAS, Azure, URLs, JVM options), the app's
//! environment, files (`spark.env_files`) and the app's own arguments —
//! never show in `plan` (text and JSON), in the logs (text and JSON), in
//! `/status` or in configuration errors; none but the app's own arguments
//! reach the app's command line (those must: the warning says so). The app
//! is a script, a real process whose argv and environment are read from
//! /proc.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// (where, TOML line) — each holds one `S3CRETnn` token.
const CONF: &[&str] = &[
    r#""spark.hadoop.fs.s3a.secret.key" = "S3CRET01""#,
    r#""spark.hadoop.fs.s3a.access.key" = "S3CRET02""#,
    r#""spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net" = "S3CRET03""#,
    r#""spark.kafka.clusters.c1.sasl.jaas.config" = 'org.apache.kafka.common.security.plain.PlainLoginModule required username="app" password="S3CRET04";'"#,
    r#""spark.ssl.keyStorePassword" = "S3CRET05""#,
    r#""spark.authenticate.secret" = "S3CRET06""#,
    r#""spark.kubernetes.authenticate.submission.oauthToken" = "S3CRET07""#,
    r#""spark.app.orders.jdbc" = "jdbc:postgresql://db:5432/orders?user=app&password=S3CRET08&ssl=true""#,
    r#""spark.app.mssql" = "jdbc:sqlserver://db:1433;databaseName=o;user=app;password=S3CRET09""#,
    r#""spark.app.broker" = "amqp://app:S3CRET10@mq:5672/vhost""#,
    r#""spark.app.blob" = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S3CRET11;EndpointSuffix=core.windows.net""#,
    r#""spark.app.sas" = "https://acct.blob.core.windows.net/c?sv=2022-11-02&sig=S3CRET12&se=2030""#,
    r#""spark.driver.extraJavaOptions" = "-Dapp.db.password=S3CRET13 -Dapp.name=x""#,
    r#""spark.hadoop.fs.gs.auth.service.account.private.key" = "S3CRET14""#,
    r#""spark.app.odbc" = "Driver={ODBC};Uid=app;Pwd=S3CRET15;""#,
];

const ENV: &[&str] = &[
    r#"AWS_SECRET_ACCESS_KEY = "S3CRET16""#,
    r#"DB_PASSWORD = "S3CRET17""#,
    r#"DATABASE_URL = "postgresql://app:S3CRET18@db/orders""#,
    r#"API_TOKEN = "S3CRET19""#,
];

/// `spark.env_files`: a name without any marker, from a file.
const FROM_FILE: (&str, &str) = ("ORDERS_DB_CONN", "S3CRET20");

/// On the app's command line by design.
const ARGS: &[&str] = &[
    "--password",
    "S3CRET21",
    "--db-token=S3CRET22",
    "--jdbc-url",
    "jdbc:mysql://db/o?user=u&password=S3CRET23",
    "secret.key=S3CRET24",
];
const ARGV_SECRETS: &[&str] = &["S3CRET21", "S3CRET22", "S3CRET23", "S3CRET24"];

fn config(dir: &Path, port: u16, json: bool) -> PathBuf {
    config_with(dir, port, json, true)
}

/// The table as a config; `env_files` false leaves out `[spark.env_files]`.
fn config_with(dir: &Path, port: u16, json: bool, env_files: bool) -> PathBuf {
    // The shell keeps its arguments: its argv is what spark-submit got.
    let home = script_spark_home(dir, "#!/bin/sh\ntrap 'exit 0' TERM\nsleep 1000 &\nwait\n");
    let app = write(dir, "app.py", "# unused\n");
    let secret_file = write(dir, "orders-db", &format!("{}\n", FROM_FILE.1));
    let args: Vec<String> = ARGS.iter().map(|a| format!("{a:?}")).collect();
    let files = if env_files {
        format!(
            "[spark.env_files]\n{} = \"{}\"\n",
            FROM_FILE.0,
            secret_file.display()
        )
    } else {
        String::new()
    };
    write(
        dir,
        "sv.toml",
        &format!(
            "[spark]\nhome = \"{home}\"\napp = \"{app}\"\napp_args = [{args}]\n[spark.conf]\n{conf}\n\
             [spark.env]\n{env}\n{files}[supervisor]\nruntime_dir = \"{d}/run\"\n\
             exit_linger = \"0s\"\n[probes]\nlisten = \"127.0.0.1:{port}\"\nspark_ui = \"http://127.0.0.1:{ui}\"\n\
             [jvm]\ncds = \"off\"\n[log]\nformat = \"{format}\"\n",
            home = home.display(),
            app = app.display(),
            args = args.join(", "),
            conf = CONF.join("\n"),
            env = ENV.join("\n"),
            d = dir.display(),
            ui = free_port(),
            format = if json { "json" } else { "text" },
        ),
    )
}

fn tokens(text: &str) -> Vec<String> {
    let mut found: Vec<String> = text
        .match_indices("S3CRET")
        .map(|(i, _)| text[i..(i + 8).min(text.len())].to_string())
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_table_has_enough_shapes() {
    let n = CONF.len() + ENV.len() + 1 + ARGV_SECRETS.len();
    assert!(n >= 20, "{n} shapes");
}

#[test]
fn plan_shows_no_secret_in_text_or_json() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), free_port(), false);
    for format in ["text", "json"] {
        let out = sparkvisor(
            &[
                "plan",
                "--config",
                cfg.to_str().unwrap(),
                "--format",
                format,
            ],
            &[],
        );
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "{text}");
        assert_eq!(
            tokens(&text),
            Vec::<String>::new(),
            "plan --format {format}:\n{text}"
        );
        assert!(text.contains(FROM_FILE.0), "the variable is listed: {text}");
    }
}

#[test]
fn a_configuration_error_does_not_echo_a_secret() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config_with(d.path(), free_port(), false, false);
    for bad in [
        "spark.env.DB_PASSWORD={nested=\"S3CRET90\"}",
        "probes.spark_ui=\"http://u:S3CRET91@h\"",
    ] {
        let out = sparkvisor(
            &["plan", "--config", cfg.to_str().unwrap(), "--set", bad],
            &[],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert_eq!(tokens(&err), Vec::<String>::new(), "{bad}: {err}");
    }
}

fn run_and_check(json: bool) {
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(d.path(), port, json);
    let mut sv = Running::start(&cfg, port, false, &[]);
    let st = sv.wait_status("the app running", Duration::from_secs(30), |s| {
        s["state"] == "running"
    });
    let pid = st["pid"].as_i64().unwrap() as i32;
    // The app's real command line: its own arguments only.
    let argv = cmdline(pid).join(" ");
    assert_eq!(
        tokens(&argv),
        ARGV_SECRETS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        "argv: {argv}"
    );
    // Its environment has what it was given, from the file too.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains(&format!("{}={}\0", FROM_FILE.0, FROM_FILE.1)),
        "spark.env_files reaches the app"
    );
    assert!(environ.contains("DB_PASSWORD=S3CRET17\0"));
    // /status and the logs show none.
    let (_, status) = get(port, "/status").unwrap();
    assert_eq!(tokens(&status), Vec::<String>::new(), "/status: {status}");
    let log = sv.log_text();
    assert!(
        log.contains("spark.app_args hold what looks like a secret"),
        "the argv warning: {log}"
    );
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 0);
    let log = sv.log_text();
    if json {
        for line in log.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("a JSON log line: {e}: {line}"));
        }
    }
    assert_eq!(tokens(&log), Vec::<String>::new(), "logs:\n{log}");
    assert!(log.contains("started spark-submit"), "{log}");
    // Spark still gets every value unaltered (0600 properties file).
    let props = std::fs::read_to_string(d.path().join("run/spark.properties")).unwrap();
    for n in 1..=15 {
        assert!(
            props.contains(&format!("S3CRET{n:02}")),
            "S3CRET{n:02} reaches Spark"
        );
    }
}

#[test]
fn run_shows_no_secret_in_text_logs_status_or_foreign_argv() {
    run_and_check(false);
}

#[test]
fn run_shows_no_secret_in_json_logs() {
    run_and_check(true);
}
