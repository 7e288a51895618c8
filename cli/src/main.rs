//! `tg-session`: reach the sessions a tg-session bot stores, without
//! hand-written Redis or SQL.
//!
//! ```text
//! tg-session ls redis://127.0.0.1/ --prefix my_bot:counter:
//! tg-session get sqlite:sessions.db my_bot:counter:42
//! tg-session rm postgres://bot@localhost/bot my_bot:counter:42 --dry-run
//! tg-session erase-user redis://127.0.0.1/ 42 --session counter:user --session profile:user_in_chat
//! tg-session copy --from sqlite:sessions.db --to postgres://bot@localhost/bot
//! tg-session stats redis://127.0.0.1/
//! ```

mod commands;
mod decode;
mod target;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::decode::CodecChoice;
use crate::target::StorageUrl;

/// Reach the sessions a tg-session bot stores: list, read, delete, erase a
/// user's data, copy between storages, count.
///
/// Storages are named by URL: redis://host:6379/0, rediss://…,
/// redis-cluster://host:7000,host:7001, postgres://user@host/db,
/// sqlite:path/to/sessions.db.
#[derive(Parser, Debug)]
#[command(name = "tg-session", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the keys under a prefix, with their versions and remaining TTLs.
    Ls {
        /// The storage.
        storage: StorageUrl,
        #[command(flatten)]
        selection: Selection,
    },
    /// Print one record decoded to JSON (its version, schema version and TTL too).
    Get {
        /// The storage.
        storage: StorageUrl,
        /// The record's whole key, as `ls` prints it (`my_bot:counter:42`).
        key: String,
        /// The codec the record was written with.
        #[arg(long, value_enum, default_value_t = CodecChoice::Auto)]
        codec: CodecChoice,
    },
    /// Delete records by key.
    Rm {
        /// The storage.
        storage: StorageUrl,
        /// The whole keys, as `ls` prints them.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete everything stored about one user: their `user` sessions and
    /// their `user_in_chat` sessions in every chat.
    EraseUser {
        /// The storage.
        storage: StorageUrl,
        /// The user's Telegram id.
        user: u64,
        #[command(flatten)]
        sessions: SessionTypes,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete everything stored about one chat: its `chat` and `chat_thread`
    /// sessions and the `user_in_chat` sessions of everyone in it.
    EraseChat {
        /// The storage.
        storage: StorageUrl,
        /// The chat's Telegram id (negative for groups).
        #[arg(allow_negative_numbers = true)]
        chat: i64,
        #[command(flatten)]
        sessions: SessionTypes,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy every record from one storage to another, keeping versions and
    /// remaining TTLs; a record the destination holds at the same or a newer
    /// version is skipped, so running it again changes nothing.
    Copy {
        /// Where the records are.
        #[arg(long)]
        from: StorageUrl,
        /// Where they go.
        #[arg(long)]
        to: StorageUrl,
        #[command(flatten)]
        selection: Selection,
        /// Continue a copy that stopped, from the cursor it printed.
        #[arg(long)]
        resume: Option<String>,
        /// Count what would be copied and skipped; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Count records and bytes per session name.
    Stats {
        /// The storage.
        storage: StorageUrl,
        #[command(flatten)]
        selection: Selection,
    },
}

/// Which keys a scan visits.
#[derive(Args, Debug)]
struct Selection {
    /// Only keys starting with this text (`my_bot:` or `my_bot:counter:`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Records read per storage round trip.
    #[arg(long, default_value_t = tg_session::data::DEFAULT_PAGE)]
    page_size: usize,
}

/// The session types to reach, since a storage does not record them.
#[derive(Args, Debug)]
struct SessionTypes {
    /// A session type as `name:scope` (`counter:user`,
    /// `profile:user_in_chat`); scopes: user, chat, user_in_chat,
    /// chat_thread, global. Repeat for each type.
    #[arg(long = "session", required = true, value_name = "NAME:SCOPE")]
    sessions: Vec<commands::SessionType>,
    /// The key prefix the bot's manager was built with.
    #[arg(long)]
    prefix: Option<String>,
    /// The bot's id, when the manager puts it in keys (`bot_id_in_keys`).
    #[arg(long)]
    bot: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
