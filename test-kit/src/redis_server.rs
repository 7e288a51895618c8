//! A real `redis-server` for tests and benchmarks: started on a free loopback
//! port in its own temporary directory, killed when dropped.
//!
//! Several test binaries and the Redis benchmark include this file; each uses
//! part of it.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer `PING`.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A `redis-server` child process on `127.0.0.1`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// A server that writes every change to its append-only file before
    /// answering, so a killed server restarts with everything it acknowledged.
    pub fn start_persistent() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    /// A server with extra command-line options (`["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        // Another process may take the port between choosing and binding it:
        // then the server exits at once and another port is tried.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn_and_wait() {
                return server;
            }
        }
        panic!("redis-server did not start; log:\n{}", server.log());
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (its append-only file lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server at once (SIGKILL: no shutdown save) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses the server (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("server is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Starts the server again on the same port and directory (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        // The old socket is closed; only a stranger grabbing the port in
        // between could stop this, and then the message says so.
        assert!(
            self.spawn_and_wait(),
            "redis-server did not restart on port {}; log:\n{}",
            self.port,
            self.log()
        );
    }

    /// Sends one command over a fresh connection and returns the raw reply
    /// (for inspection in tests, independent of the storage under test).
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect");
        stream
            .set_read_timeout(Some(START_DEADLINE))
            .expect("timeout");
        stream.write_all(&encode(args)).expect("send");
        read_reply(&mut BufReader::new(stream))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawns the server; true once it answers `PING`, false if it exited.
    fn spawn_and_wait(&mut self) -> bool {
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let child = Command::new(&program)
            .arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `{program}` ({e}); install redis-server or set REDIS_SERVER")
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            if self.answers_ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    /// Whether the server answers `PING` (with `PONG`, or with `NOAUTH` when
    /// it wants a password) and has loaded its data.
    pub fn answers_ping(&self) -> bool {
        let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if (&stream).write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = BufReader::new(stream).read_line(&mut reply);
        reply.starts_with("+PONG") || reply.starts_with("-NOAUTH")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// A command in the Redis protocol.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

/// Reads one reply; bulk strings and arrays are flattened to text, one
/// element per line.
pub fn read_reply(reader: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reply");
    let line = line.trim_end_matches("\r\n");
    match line.as_bytes().first() {
        Some(b'$') => {
            let len: i64 = line[1..].parse().expect("bulk length");
            if len < 0 {
                return String::new();
            }
            let mut buf = vec![0; usize::try_from(len).expect("length") + 2];
            reader.read_exact(&mut buf).expect("bulk");
            buf.truncate(buf.len() - 2);
            String::from_utf8_lossy(&buf).into_owned()
        }
        Some(b'*') => {
            let len: i64 = line[1..].parse().expect("array length");
            (0..len.max(0))
                .map(|_| read_reply(reader))
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => line.to_owned(),
    }
}

/// Counts the commands clients send to a server, through `MONITOR`.
///
/// Commands a Lua script runs are not counted: each script call is one.
/// Commands are delimited with marker `ECHO`s sent on a separate connection,
/// so a count never depends on timing.
pub struct CommandCounter {
    monitor: BufReader<TcpStream>,
    marker: TcpStream,
    marks: u64,
}

impl CommandCounter {
    /// Starts monitoring `server` (everything before this is not counted).
    pub fn new(server: &RedisServer) -> Self {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port)).expect("connect");
        stream
            .set_read_timeout(Some(START_DEADLINE))
            .expect("timeout");
        stream.write_all(b"MONITOR\r\n").expect("monitor");
        let mut monitor = BufReader::new(stream);
        assert_eq!(read_reply(&mut monitor), "+OK");
        let marker = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port)).expect("connect");
        marker
            .set_read_timeout(Some(START_DEADLINE))
            .expect("timeout");
        let mut counter = Self {
            monitor,
            marker,
            marks: 0,
        };
        counter.take();
        counter
    }

    /// The client commands (`MGET`, `EVALSHA`, …) seen since the last call.
    pub fn take(&mut self) -> Vec<String> {
        self.marks += 1;
        let mark = format!("tg-session-mark-{}", self.marks);
        self.marker
            .write_all(&encode(&["ECHO", &mark]))
            .expect("mark");
        read_reply(&mut BufReader::new(&self.marker));
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            self.monitor.read_line(&mut line).expect("monitor line");
            if line.contains(&format!("\"{mark}\"")) {
                return seen;
            }
            if line.contains(" lua] ") || line.contains("tg-session-mark-") {
                continue;
            }
            // `1700000000.123456 [0 127.0.0.1:5555] "MGET" "counter:{1}"`
            let command = line
                .split("] ")
                .nth(1)
                .and_then(|rest| rest.split('"').nth(1))
                .unwrap_or_default()
                .to_uppercase();
            seen.push(command);
        }
    }
}

/// A Redis Cluster of three primaries (no replicas), each a [`RedisServer`].
pub struct RedisCluster {
    /// The nodes; dropping the cluster stops them.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with `redis-cli
    /// --cluster create` and waits until every node reports the cluster ok.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--save",
                    "",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            })
            .collect();
        let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_owned());
        let output = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(
                nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port())),
            )
            .arg("--cluster-yes")
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{cli}` ({e})"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let deadline = Instant::now() + START_DEADLINE;
        for node in &nodes {
            while !node
                .command(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                assert!(
                    Instant::now() < deadline,
                    "cluster not ok after {START_DEADLINE:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self { nodes }
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port()))
            .collect()
    }
}
