//! A throwaway PostgreSQL server for tests: `initdb` in a temporary
//! directory, `postgres` on a free loopback port, stopped when dropped.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI, this
//! machine) the server runs as `nobody` (or a `tg-session-test` system user
//! created on the spot when there is no `nobody`).
//!
//! The server runs under a tiny `sh` watchdog that reads a signal name from
//! its stdin, which this process holds: whenever that pipe closes (the
//! handle is dropped, the test binary exits or is killed) the watchdog stops
//! PostgreSQL, so no server outlives the tests even from a `static`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections or to stop.
const PATIENCE: Duration = Duration::from_secs(60);

const WATCHDOG: &str = r#"
"$0" -D "$1" -p "$2" -k "$3" -h 127.0.0.1 -F -c max_connections=200 2>>"$4" &
pid=$!
read -r signal || signal=QUIT
kill -"${signal:-QUIT}" "$pid" 2>/dev/null
wait "$pid"
[ "${signal:-QUIT}" = QUIT ] && rm -rf "$3"
"#;

/// A running PostgreSQL server owned by a test.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    running: Option<(Child, ChildStdin)>,
}

impl PostgresServer {
    /// Initializes a cluster in a new temporary directory and starts it.
    pub fn start() -> Self {
        let bin = binaries();
        let user = unprivileged_user();
        // The unprivileged user must reach the directory: $TMPDIR may be
        // private to root, /tmp is open to all.
        let parent = match user {
            Some(_) => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("tg-session-pg-")
            .tempdir_in(parent)
            .expect("temporary directory");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        }
        let data = dir.path().join("data");
        let output = as_user(Command::new(bin.join("initdb")), user)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let mut server = Self {
            dir,
            bin,
            port: 0,
            user,
            running: None,
        };
        // Another process may take the free port before the server binds it.
        for _ in 0..5 {
            server.port = free_port();
            if server.launch() {
                return server;
            }
        }
        panic!("PostgreSQL did not start; log:\n{}", server.log());
    }

    /// A URL for the `postgres` database as the `postgres` superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server cleanly (fast shutdown) and starts it again on the
    /// same data and port.
    pub fn restart(&mut self) {
        self.stop("INT");
        assert!(
            self.launch(),
            "PostgreSQL did not restart; log:\n{}",
            self.log()
        );
    }

    /// Starts `postgres` and waits until it accepts connections; `false`
    /// when it exited instead (port taken).
    fn launch(&mut self) -> bool {
        let log = self.dir.path().join("postgres.log");
        let mut child = as_user(Command::new("sh"), self.user)
            .arg("-c")
            .arg(WATCHDOG)
            .arg(self.bin.join("postgres"))
            .arg(self.dir.path().join("data"))
            .arg(self.port.to_string())
            .arg(self.dir.path())
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn postgres");
        let stdin = child.stdin.take().expect("watchdog stdin");
        self.running = Some((child, stdin));
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            let exited = self
                .running
                .as_mut()
                .map(|(child, _)| child.try_wait().expect("poll postgres").is_some());
            if exited == Some(true) {
                self.running = None;
                return false;
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-t", "1", "-p"])
                .arg(self.port.to_string())
                .status()
                .expect("run pg_isready");
            if ready.success() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "PostgreSQL did not accept connections within {PATIENCE:?}; log:\n{}",
            self.log()
        );
    }

    /// Sends `signal` (INT: fast shutdown, QUIT: immediate) and waits for the server to exit.
    fn stop(&mut self, signal: &str) {
        let Some((mut child, mut stdin)) = self.running.take() else {
            return;
        };
        let _ = writeln!(stdin, "{signal}");
        drop(stdin);
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop("QUIT");
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`, else the directory of
/// `initdb` on the `PATH`.
fn binaries() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        .expect("PostgreSQL not found (run scripts/test, which installs it)")
}

/// `None` when this process is not root; else the uid and gid to run PostgreSQL as.
fn unprivileged_user() -> Option<(u32, u32)> {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    if euid != 0 {
        return None;
    }
    if let Some(ids) = passwd_entry("nobody") {
        return Some(ids);
    }
    // Several test binaries may race here: a failed useradd is fine when the user now exists.
    let _ = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "tg-session-test",
        ])
        .status();
    Some(passwd_entry("tg-session-test").expect("no unprivileged user to run PostgreSQL as"))
}

fn passwd_entry(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [user, _, uid, gid, ..] if *user == name => {
                Some((uid.parse().ok()?, gid.parse().ok()?))
            }
            _ => None,
        }
    })
}

fn as_user(mut command: Command, user: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command.current_dir(Path::new("/"));
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}
