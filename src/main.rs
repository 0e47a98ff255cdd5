//! Command-line parsing only; every command lives in `sparkvisor::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sparkvisor::commands::{self, OutputFormat};
use sparkvisor::config::Overrides;

#[derive(Parser)]
#[command(
    name = "sparkvisor",
    version,
    about = "PID 1 for a Spark application in a Kubernetes pod"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the sizing decisions and the exact spark-submit command; launches nothing.
    Plan {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Supervise the configured Spark app (the container entrypoint).
    Run {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print the version.
    Version,
    /// Inspect or restore a Structured Streaming checkpoint.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Restore the newest consistent copy from S3 into a new or empty directory.
    Restore {
        /// The replica, as in checkpoint.s3.uri.
        #[arg(long, value_name = "s3://BUCKET/PREFIX")]
        from: String,
        /// The directory to create (or an empty one).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Per query (local folder or s3://BUCKET/PREFIX): latest planned and committed batch, last commit, batch in flight, torn files.
    Inspect {
        /// The checkpoint root (one query, or one per subfolder).
        #[arg(value_name = "DIR")]
        location: String,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// For s3:// locations: connection settings ([checkpoint.s3]).
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// Configuration file (default: $SPARKVISOR_CONFIG, else /etc/sparkvisor/sparkvisor.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a configuration key, e.g. --set supervisor.max_restarts=5.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Add a Spark conf (like spark-submit --conf), e.g. --conf spark.sql.shuffle.partitions=8.
    #[arg(long = "conf", value_name = "KEY=VALUE")]
    confs: Vec<String>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<Format>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

impl From<Format> for OutputFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Text => OutputFormat::Text,
            Format::Json => OutputFormat::Json,
        }
    }
}

impl ConfigArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            sets: self.sets.clone(),
            confs: self.confs.clone(),
            log_format: self.log_format.map(|f| match f {
                Format::Text => "text".into(),
                Format::Json => "json".into(),
            }),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan { config, format } => {
            let format = match format {
                Format::Text => OutputFormat::Text,
                Format::Json => OutputFormat::Json,
            };
            commands::plan(&config.overrides(), format).map(|out| {
                print!("{out}");
                0
            })
        }
        Command::Run { config } => commands::run(&config.overrides()),
        Command::Checkpoint {
            command:
                CheckpointCommand::Inspect {
                    location,
                    format,
                    config,
                },
        } => {
            commands::checkpoint_inspect(&config.overrides(), &location, format.into()).map(|out| {
                print!("{out}");
                0
            })
        }
        Command::Checkpoint {
            command: CheckpointCommand::Restore { from, to, config },
        } => commands::restore(&config.overrides(), &from, &to).map(|out| {
            print!("{out}");
            0
        }),
        Command::Version => {
            println!("{}", commands::version());
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("sparkvisor: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
