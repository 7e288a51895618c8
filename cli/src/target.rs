//! Storage URLs: which storage a command talks to, and opening it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tg_session::storage::SharedStorage;
use tg_session::{PostgresStorage, RedisStorage, SqliteStorage};

/// A storage named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageUrl {
    /// `redis://…` or `rediss://…`: one Redis server.
    Redis(String),
    /// `redis-cluster://host:port,host:port`: the nodes of a Redis Cluster.
    RedisCluster(Vec<String>),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
    /// `sqlite:path` (or `sqlite://path`): a SQLite file, which must exist.
    Sqlite(PathBuf),
}

/// What a storage URL looks like, for error messages.
const FORMS: &str = "redis://host:6379/0, rediss://…, redis-cluster://host:7000,host:7001, \
                     postgres://user@host/db, sqlite:path/to/sessions.db";

impl FromStr for StorageUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| format!("`{url}` is not a storage URL; expected one of: {FORMS}"))?;
        match scheme {
            "redis" | "rediss" => Ok(Self::Redis(url.to_owned())),
            "redis-cluster" => {
                let nodes: Vec<String> = rest
                    .trim_start_matches("//")
                    .split(',')
                    .filter(|node| !node.is_empty())
                    .map(|node| format!("redis://{node}"))
                    .collect();
                match nodes.is_empty() {
                    true => Err(format!(
                        "`{url}` names no node; write redis-cluster://host:port,host:port"
                    )),
                    false => Ok(Self::RedisCluster(nodes)),
                }
            }
            "postgres" | "postgresql" => Ok(Self::Postgres(url.to_owned())),
            "sqlite" => {
                let path = rest.trim_start_matches("//");
                match path.is_empty() {
                    true => Err(format!(
                        "`{url}` names no file; write sqlite:path/to/sessions.db"
                    )),
                    false => Ok(Self::Sqlite(PathBuf::from(path))),
                }
            }
            _ => Err(format!(
                "unknown storage `{scheme}` in `{url}`; expected one of: {FORMS}"
            )),
        }
    }
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(url) | Self::Postgres(url) => f.write_str(url),
            Self::RedisCluster(nodes) => {
                let hosts: Vec<&str> = nodes
                    .iter()
                    .map(|node| node.trim_start_matches("redis://"))
                    .collect();
                write!(f, "redis-cluster://{}", hosts.join(","))
            }
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
        }
    }
}

impl StorageUrl {
    /// Connects to the storage. A tool reads and writes records directly, so
    /// no cleanup task is started and a SQLite file is never created: a
    /// mistyped path is an error, not a new empty database.
    pub async fn open(&self) -> Result<SharedStorage, String> {
        let failed = |error: tg_session::StorageError| format!("cannot open `{self}`: {error}");
        Ok(match self {
            Self::Redis(url) => {
                std::sync::Arc::new(RedisStorage::connect(url).await.map_err(failed)?)
            }
            Self::RedisCluster(nodes) => std::sync::Arc::new(
                RedisStorage::cluster(nodes.iter().map(String::as_str).collect::<Vec<_>>())
                    .await
                    .map_err(failed)?,
            ),
            Self::Postgres(url) => {
                std::sync::Arc::new(PostgresStorage::connect(url).await.map_err(failed)?)
            }
            Self::Sqlite(path) => {
                if !path.is_file() {
                    return Err(format!(
                        "cannot open `{self}`: no such file (the tool never creates a database)"
                    ));
                }
                std::sync::Arc::new(SqliteStorage::open(path).await.map_err(failed)?)
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_names_the_forms_on_error() {
        assert_eq!(
            "redis://127.0.0.1:6379/0".parse(),
            Ok(StorageUrl::Redis("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            "redis-cluster://a:1,b:2".parse(),
            Ok(StorageUrl::RedisCluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert_eq!(
            "sqlite:db/s.db".parse(),
            Ok(StorageUrl::Sqlite(PathBuf::from("db/s.db")))
        );
        assert_eq!(
            "sqlite:///tmp/s.db".parse(),
            Ok(StorageUrl::Sqlite(PathBuf::from("/tmp/s.db")))
        );
        assert_eq!(
            "postgresql://u@h/d".parse(),
            Ok(StorageUrl::Postgres("postgresql://u@h/d".into()))
        );
        let error = "mysql://x".parse::<StorageUrl>().unwrap_err();
        assert!(
            error.contains("unknown storage `mysql`") && error.contains("sqlite:"),
            "{error}"
        );
        let error = "sessions.db".parse::<StorageUrl>().unwrap_err();
        assert!(error.contains("not a storage URL"), "{error}");
        let error = "sqlite:".parse::<StorageUrl>().unwrap_err();
        assert!(error.contains("names no file"), "{error}");
    }
}
