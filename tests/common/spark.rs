//! Running real Spark from the tests: one Spark at a time on the machine
//! (an exclusive `flock` on /tmp/sparkvisor-spark.lock), and streaming
//! jobs started with the wheel's spark-submit in their own process group
//! so the whole tree can be killed like a lost node.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{python, repo, spark_home};

/// A spark-submit process tree.
pub struct SparkJob {
    child: Option<Child>,
}

impl SparkJob {
    /// `spark-submit --master local[2] examples/<app>` with the checkpoint
    /// root in SPARKVISOR_CHECKPOINT_DIR; output (stdout and stderr) goes
    /// to `log`.
    pub fn start(app: &str, checkpoint: &Path, env: &[(&str, &str)], log: &Path) -> SparkJob {
        let home = spark_home();
        let log = File::create(log).expect("create the Spark log");
        let mut cmd = Command::new(home.join("bin/spark-submit"));
        cmd.args(["--master", "local[2]", "--driver-memory", "1g"])
            .arg(repo().join("examples").join(app))
            .env("SPARK_HOME", &home)
            .env("PYSPARK_PYTHON", python())
            .env("SPARKVISOR_CHECKPOINT_DIR", checkpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        SparkJob {
            child: Some(cmd.spawn().expect("start spark-submit")),
        }
    }

    /// SIGKILLs the whole process tree, as when a node disappears.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Panics (with the log) when spark-submit has already exited.
    pub fn assert_running(&mut self, log: &Path) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "spark-submit exited early ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

impl Drop for SparkJob {
    fn drop(&mut self) {
        self.kill();
    }
}
