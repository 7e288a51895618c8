//! A private `redis-server` for the examples that need Redis and were given
//! no `REDIS_URL`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::demo::BoxError;

/// A `redis-server` child process on a free port of 127.0.0.1, with its data
/// in a temporary directory; killed when dropped.
pub struct LocalRedis {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl LocalRedis {
    /// Starts `redis-server` and waits until it says it accepts connections.
    pub fn start() -> Result<Self, BoxError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|error| {
                format!("REDIS_URL is not set and `redis-server` could not be started: {error}")
            })?;
        let stdout = child.stdout.take().ok_or("no stdout from redis-server")?;
        let redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
            _dir: dir,
        };
        for line in BufReader::new(stdout).lines() {
            if line?.contains("Ready to accept connections") {
                println!(
                    "REDIS_URL is not set: started redis-server on 127.0.0.1:{port} (stopped at exit)"
                );
                return Ok(redis);
            }
        }
        Err("redis-server exited before accepting connections".into())
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
