//! Requests to a running HotSpot JVM over its attach socket, without the
//! JDK's tools (JRE images lack them): a diagnostic command (`jcmd`) has the
//! driver write its dynamic archive while it keeps running, and `load`
//! runs a Java agent in it (the class linker of [`super::link`]).
//!
//! Protocol (HotSpot on Linux): when `/tmp/.java_pid<pid>` does not exist,
//! create `.attach_pid<pid>` in the JVM's /tmp (or its working directory)
//! and send SIGQUIT; the JVM starts its attach listener and creates the
//! socket. A request is `1\0<operation>\0` and three arguments, each ended
//! by `\0` (`jcmd` takes the command line; `load` the library, whether its
//! path is absolute, and its options); the reply is the status code on the
//! first line, then the operation's output.
//!
//! Invariants: SIGQUIT is sent only when the socket is missing and the JVM
//! runs its "Signal Dispatcher" thread (so it handles SIGQUIT: a JVM still
//! starting, or started with `-Xrs`, would be killed by it); the trigger
//! file is always removed; every wait has a deadline. Runs blocking I/O:
//! call from a blocking thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::JvmError;

/// How long the JVM may take to start its attach listener.
const LISTENER_TIMEOUT: Duration = Duration::from_secs(15);

/// The pid of `pid` inside its own PID namespace (the JVM names its files
/// after that one).
pub fn namespace_pid(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_nspid(&s))
        .unwrap_or(pid)
}

/// The last field of the `NSpid:` line of /proc/PID/status.
pub fn parse_nspid(status: &str) -> Option<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|rest| rest.split_whitespace().last())
        .and_then(|p| p.parse().ok())
}

/// Whether the JVM `pid` runs its signal dispatcher thread, i.e. handles
/// SIGQUIT (thread names are cut to 15 characters in /proc).
pub fn handles_sigquit(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("comm"))
            .is_ok_and(|c| c.trim_end() == "Signal Dispatch")
    })
}

/// Splits a reply into (status code, output).
pub fn parse_reply(reply: &str) -> Option<(i32, &str)> {
    let (first, rest) = reply.split_once('\n').unwrap_or((reply, ""));
    Some((first.trim().parse().ok()?, rest))
}

/// Runs `command` (e.g. `VM.cds dynamic_dump /path`) in the JVM `pid` and
/// returns its output; waits at most `timeout` for the reply.
pub fn jcmd(pid: i32, command: &str, timeout: Duration) -> Result<String, JvmError> {
    request(pid, ["jcmd", command, "", ""], timeout)
}

/// Loads the Java agent `jar` (a path the JVM can open) into the JVM `pid`
/// and waits, at most `timeout`, until its `agentmain` has returned.
pub fn load_java_agent(pid: i32, jar: &Path, timeout: Duration) -> Result<(), JvmError> {
    let jar = jar.to_string_lossy();
    let out = request(pid, ["load", "instrument", "false", &jar], timeout)?;
    match parse_load_result(&out) {
        Some(0) => Ok(()),
        Some(code) => Err(JvmError::Attach {
            pid,
            why: format!("the agent {jar} failed to load or run (return code {code})"),
        }),
        None => Err(JvmError::Attach {
            pid,
            why: format!("unexpected reply to loading {jar}: {:?}", out.trim()),
        }),
    }
}

/// The agent's return code in the output of `load`: a bare number or
/// `return code: N` (the form differs between JDK releases).
pub fn parse_load_result(out: &str) -> Option<i32> {
    let line = out.lines().map(str::trim).find(|l| !l.is_empty())?;
    line.strip_prefix("return code:")
        .unwrap_or(line)
        .trim()
        .parse()
        .ok()
}

/// Sends one request (operation and three arguments) and returns the
/// output after a zero status.
fn request(pid: i32, args: [&str; 4], timeout: Duration) -> Result<String, JvmError> {
    let fail = |why: String| JvmError::Attach { pid, why };
    let nspid = namespace_pid(pid);
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let socket = root.join(format!("tmp/.java_pid{nspid}"));
    if !is_socket(&socket) {
        start_listener(pid, nspid, &root, &socket).map_err(fail)?;
    }
    let mut s = UnixStream::connect(&socket)
        .map_err(|e| fail(format!("cannot connect to {}: {e}", socket.display())))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .and_then(|_| s.set_read_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let mut request = String::from("1\0");
    for a in args {
        request.push_str(a);
        request.push('\0');
    }
    s.write_all(request.as_bytes())
        .map_err(|e| fail(format!("cannot send the request: {e}")))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .map_err(|e| fail(format!("no complete reply within {timeout:?}: {e}")))?;
    let reply = String::from_utf8_lossy(&reply);
    match parse_reply(&reply) {
        Some((0, out)) => Ok(out.to_string()),
        Some((code, out)) => Err(fail(format!("status {code}: {}", out.trim()))),
        None => Err(fail(format!("unexpected reply {:?}", reply.trim()))),
    }
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// Creates the trigger file, sends SIGQUIT and waits for the socket.
fn start_listener(pid: i32, nspid: i32, root: &Path, socket: &Path) -> Result<(), String> {
    let name = format!(".attach_pid{nspid}");
    // HotSpot looks in its working directory and in /tmp; /tmp first, so
    // a trigger left behind (sparkvisor stopped mid-attach) never litters
    // the app's working directory.
    let candidates = [
        root.join("tmp").join(&name),
        PathBuf::from(format!("/proc/{pid}/cwd")).join(&name),
    ];
    let trigger = candidates
        .iter()
        .find(|p| std::fs::write(p, b"").is_ok())
        .cloned()
        .ok_or_else(|| format!("cannot create {name} in the JVM's working directory or /tmp",))?;
    let result = (|| {
        if !handles_sigquit(pid) {
            return Err(
                "the JVM has no signal dispatcher (still starting, or -Xrs): SIGQUIT would kill it"
                    .into(),
            );
        }
        kill(Pid::from_raw(pid), Signal::SIGQUIT).map_err(|e| format!("SIGQUIT: {e}"))?;
        let deadline = Instant::now() + LISTENER_TIMEOUT;
        while !is_socket(socket) {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the JVM did not open {} within {LISTENER_TIMEOUT:?} (attach disabled?)",
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&trigger);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_is_the_innermost_pid() {
        assert_eq!(parse_nspid("Name:\tjava\nNSpid:\t4242\t7\n"), Some(7));
        assert_eq!(parse_nspid("NSpid:\t99\n"), Some(99));
        assert_eq!(parse_nspid("Name:\tjava\n"), None);
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply("0\nDynamic dump:\n"),
            Some((0, "Dynamic dump:\n"))
        );
        assert_eq!(parse_reply("0"), Some((0, "")));
        assert_eq!(parse_reply("101\n"), Some((101, "")));
        assert_eq!(parse_reply("garbage"), None);
    }

    #[test]
    fn load_results() {
        assert_eq!(parse_load_result("0\n"), Some(0));
        assert_eq!(parse_load_result("return code: 0\n"), Some(0));
        assert_eq!(parse_load_result("\nreturn code: 100\n"), Some(100));
        assert_eq!(parse_load_result(""), None);
        assert_eq!(parse_load_result("Agent_OnAttach failed"), None);
    }

    /// A real JVM (Java's own RMI registry: a JDK class that runs until
    /// killed) answers a diagnostic command.
    #[test]
    fn talks_to_a_real_jvm() {
        let jvm = test_jvm::TestJvm::start();
        let result = jcmd(jvm.pid(), "VM.version", Duration::from_secs(30));
        let pid = jvm.pid();
        drop(jvm);
        let out = result.expect("jcmd VM.version");
        assert!(out.contains("JDK") || out.contains("VM"), "{out}");
        let trigger = format!("/tmp/.attach_pid{pid}");
        assert!(!Path::new(&trigger).exists(), "trigger file removed");
    }
}

/// A real JVM for tests that attach to one: Java's RMI registry (a JDK
/// class that runs until killed), killed when dropped.
#[cfg(test)]
pub(crate) mod test_jvm {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct TestJvm(Child);

    impl TestJvm {
        /// Starts a JVM whose `main` prints a line and then sleeps, and
        /// waits for that line: by then the JVM has finished booting (its
        /// module system and system class loader are up), so attaching and
        /// loading an agent behave as in a running driver. Waiting only for
        /// the SIGQUIT handler was too early under load (loading an agent
        /// failed with a NullPointerException inside the JVM).
        pub fn start() -> TestJvm {
            use std::io::BufRead;
            let dir =
                std::env::temp_dir().join(format!("sparkvisor-testjvm-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let src = dir.join("Sleeper.java");
            std::fs::write(
                &src,
                "public class Sleeper { public static void main(String[] a) throws Exception { \
                 System.out.println(\"ready\"); System.out.flush(); Thread.sleep(600_000); } }\n",
            )
            .expect("write the test JVM's source");
            let mut child = Command::new("java")
                .arg(&src)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("java on PATH");
            let stdout = child.stdout.take().expect("piped stdout");
            let jvm = TestJvm(child);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("the test JVM never started");
            assert_eq!(line.trim(), "ready", "the test JVM did not start");
            let deadline = Instant::now() + Duration::from_secs(60);
            while !super::handles_sigquit(jvm.pid()) {
                assert!(Instant::now() < deadline, "the JVM never handled SIGQUIT");
                std::thread::sleep(Duration::from_millis(50));
            }
            jvm
        }

        pub fn pid(&self) -> i32 {
            self.0.id() as i32
        }

        pub fn is_running(&mut self) -> bool {
            self.0.try_wait().is_ok_and(|s| s.is_none())
        }
    }

    impl Drop for TestJvm {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
