//! What each command does, over the storage API (`Storage::load`, `write`,
//! `scan`, `restore`) and `tg_session::data`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::str::FromStr;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tg_session::data::{CopyOptions, Scanner, SessionData, Subject, copy};
use tg_session::storage::{KeyPrefix, ScanCursor, SharedStorage, Storage, Write, WriteOutcome};
use tg_session::{KeyStrategy, Scope, StorageKey};

use crate::decode::decode;
use crate::{Command, Selection, SessionTypes};

/// A session type named on the command line: `name:scope`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionType {
    name: String,
    scope: Scope,
}

impl FromStr for SessionType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, scope) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` is not `name:scope` (e.g. `counter:user`)"))?;
        let scope = Scope::from_name(scope).ok_or_else(|| {
            let names: Vec<&str> = Scope::ALL.iter().map(|scope| scope.name()).collect();
            format!(
                "unknown scope `{scope}`; expected one of {}",
                names.join(", ")
            )
        })?;
        Ok(Self {
            name: name.to_owned(),
            scope,
        })
    }
}

type Outcome = Result<(), String>;

/// Runs one command; the error is the message to print.
pub async fn run(command: Command) -> Outcome {
    match command {
        Command::Ls { storage, selection } => ls(&*storage.open().await?, &selection).await,
        Command::Get {
            storage,
            key,
            codec,
        } => get(&*storage.open().await?, &key, codec).await,
        Command::Rm {
            storage,
            keys,
            dry_run,
        } => rm(&*storage.open().await?, &keys, dry_run).await,
        Command::EraseUser {
            storage,
            user,
            sessions,
            dry_run,
        } => {
            erase(
                storage.open().await?,
                Subject::User(user),
                &sessions,
                dry_run,
            )
            .await
        }
        Command::EraseChat {
            storage,
            chat,
            sessions,
            dry_run,
        } => {
            erase(
                storage.open().await?,
                Subject::Chat(chat),
                &sessions,
                dry_run,
            )
            .await
        }
        Command::Copy {
            from,
            to,
            selection,
            resume,
            dry_run,
        } => {
            let (source, destination) = (from.open().await?, to.open().await?);
            let resume = resume.map(ScanCursor::new);
            match dry_run {
                true => copy_dry_run(&*source, &*destination, &selection, resume).await,
                false => copy_all(&*source, &*destination, &selection, resume).await,
            }
        }
        Command::Stats { storage, selection } => stats(&*storage.open().await?, &selection).await,
    }
}

fn scanner<'a>(storage: &'a dyn Storage, selection: &Selection) -> Scanner<'a> {
    Scanner::new(storage, KeyPrefix::text(selection.prefix.clone())).page_size(selection.page_size)
}

fn seconds(ttl: Option<Duration>) -> String {
    ttl.map_or_else(|| "-".to_owned(), |ttl| format!("{}s", ttl.as_secs()))
}

fn storage_error(storage: &dyn Storage) -> impl Fn(tg_session::StorageError) -> String + '_ {
    move |error| format!("storage `{}`: {error}", storage.name())
}

async fn ls(storage: &dyn Storage, selection: &Selection) -> Outcome {
    let mut scan = scanner(storage, selection).with_values();
    let mut out = std::io::stdout().lock();
    let mut count = 0u64;
    while let Some(page) = scan.next_page().await.map_err(storage_error(storage))? {
        for entry in page {
            let version = entry.record.map_or(0, |record| record.version);
            let _ = writeln!(out, "{}\tv{version}\tttl {}", entry.key, seconds(entry.ttl));
            count += 1;
        }
    }
    eprintln!("{count} keys");
    Ok(())
}

async fn get(storage: &dyn Storage, key: &str, codec: crate::decode::CodecChoice) -> Outcome {
    let key = StorageKey::parse(key);
    let record = storage
        .load(std::slice::from_ref(&key))
        .await
        .map_err(storage_error(storage))?
        .pop()
        .flatten()
        .ok_or_else(|| {
            format!(
                "no record at key `{key}` in `{}` (`tg-session ls` lists the keys)",
                storage.name()
            )
        })?;
    let decoded = decode(&record.value, codec)
        .map_err(|error| format!("the record at `{key}` does not decode: {error}"))?;
    let ttl = remaining_ttl(storage, &key).await.unwrap_or_else(|why| {
        eprintln!("the remaining TTL of `{key}` is unknown: {why}");
        None
    });
    let shown = json!({
        "key": key.as_str(),
        "version": record.version,
        "schema_version": decoded.schema_version,
        "ttl_seconds": ttl.map(|ttl| ttl.as_secs()),
        "value": decoded.value,
    });
    let text = serde_json::to_string_pretty(&shown).map_err(|error| error.to_string())?;
    println!("{text}");
    Ok(())
}

/// The remaining TTL of the record at `key` (`None`: it has none), which
/// only a scan with values reports. The key is the first of its scope
/// prefix in key order, so a SQL scan finds it on the first page; Redis
/// pages through its `SCAN` until it turns up.
async fn remaining_ttl(
    storage: &dyn Storage,
    key: &StorageKey,
) -> Result<Option<Duration>, String> {
    let prefix = KeyPrefix::scope(key.namespace(), key.scope_key());
    let mut cursor = None;
    loop {
        let page = storage
            .scan(&prefix, cursor.as_ref(), 16, true)
            .await
            .map_err(|error| error.to_string())?;
        if let Some(entry) = page.entries.into_iter().find(|entry| entry.key == *key) {
            return Ok(entry.ttl);
        }
        cursor = Some(
            page.next
                .ok_or("the record was gone by the time it was scanned")?,
        );
    }
}

async fn rm(storage: &dyn Storage, keys: &[String], dry_run: bool) -> Outcome {
    let keys: Vec<StorageKey> = keys.iter().map(|key| StorageKey::parse(key)).collect();
    let records = storage.load(&keys).await.map_err(storage_error(storage))?;
    let missing: Vec<&str> = keys
        .iter()
        .zip(&records)
        .filter(|(_, record)| record.is_none())
        .map(|(key, _)| key.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no record at {} in `{}`; nothing was deleted",
            missing.join(", "),
            storage.name()
        ));
    }
    if dry_run {
        for (key, record) in keys.iter().zip(&records) {
            let version = record.as_ref().map_or(0, |record| record.version);
            println!("would remove {key} (v{version})");
        }
        return Ok(());
    }
    let writes: Vec<Write> = keys
        .iter()
        .map(|key| Write::Delete { key: key.clone() })
        .collect();
    let outcomes = storage
        .write(&writes)
        .await
        .map_err(storage_error(storage))?;
    let mut failed = Vec::new();
    for (key, outcome) in keys.iter().zip(outcomes) {
        match outcome {
            WriteOutcome::Deleted | WriteOutcome::Written { .. } => println!("removed {key}"),
            other => failed.push(format!("{key}: {other:?}")),
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!("not removed: {}", failed.join("; "))),
    }
}

async fn erase(
    storage: SharedStorage,
    subject: Subject,
    types: &SessionTypes,
    dry_run: bool,
) -> Outcome {
    let mut data = SessionData::new(types.prefix.as_deref());
    if let Some(bot) = types.bot {
        data = data.bot(bot);
    }
    for session in &types.sessions {
        data = data.with_session(
            session.name.clone(),
            KeyStrategy::Scope(session.scope),
            storage.clone(),
        );
    }
    let error = storage_error(&*storage);
    if dry_run {
        let found = data.find(subject).await.map_err(error)?;
        for record in &found.records {
            println!(
                "would remove {} ({}, v{})",
                record.key, record.session, record.record.version
            );
        }
        eprintln!("{} records", found.records.len());
        return Ok(());
    }
    let erasure = data.erase(subject).await.map_err(error)?;
    for record in &erasure.removed {
        println!(
            "removed {} ({}, v{})",
            record.key, record.session, record.record.version
        );
    }
    eprintln!("{} records removed", erasure.removed.len());
    match erasure.busy.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "{} keys were held by a running update and were not removed ({}); run the command again",
            erasure.busy.len(),
            erasure
                .busy
                .iter()
                .map(StorageKey::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn progress(verb: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(format!("{verb}…"));
    bar
}

async fn copy_all(
    from: &dyn Storage,
    to: &dyn Storage,
    selection: &Selection,
    mut resume: Option<ScanCursor>,
) -> Outcome {
    let bar = progress("copying");
    let (mut copied, mut skipped) = (0u64, 0u64);
    loop {
        let options = CopyOptions {
            prefix: KeyPrefix::text(selection.prefix.clone()),
            page_size: selection.page_size,
            resume_from: resume.take(),
            max_pages: Some(1),
        };
        match copy(from, to, options).await {
            Ok(report) => {
                copied += report.copied;
                skipped += report.skipped;
                bar.set_message(format!("{copied} copied, {skipped} skipped"));
                match report.resume_from {
                    Some(cursor) => resume = Some(cursor),
                    None => break,
                }
            }
            Err(stopped) => {
                bar.abandon();
                let resume = stopped
                    .report
                    .resume_from
                    .map(|cursor| format!("; continue with --resume '{cursor}'"))
                    .unwrap_or_default();
                return Err(format!(
                    "copy from `{}` to `{}` stopped after {} copied and {} skipped records: {}{resume}",
                    from.name(),
                    to.name(),
                    copied + stopped.report.copied,
                    skipped + stopped.report.skipped,
                    stopped.error,
                ));
            }
        }
    }
    bar.finish_and_clear();
    println!(
        "{copied} copied, {skipped} skipped (the destination held them at the same or a newer version)"
    );
    Ok(())
}

async fn copy_dry_run(
    from: &dyn Storage,
    to: &dyn Storage,
    selection: &Selection,
    resume: Option<ScanCursor>,
) -> Outcome {
    let mut scan = scanner(from, selection).with_values();
    if let Some(cursor) = resume {
        scan = scan.resume_from(cursor);
    }
    let (mut would_copy, mut would_skip) = (0u64, 0u64);
    while let Some(page) = scan.next_page().await.map_err(storage_error(from))? {
        let keys: Vec<StorageKey> = page.iter().map(|entry| entry.key.clone()).collect();
        let held = to.load(&keys).await.map_err(storage_error(to))?;
        for (entry, held) in page.iter().zip(held) {
            let version = entry.record.as_ref().map_or(0, |record| record.version);
            match held {
                Some(held) if held.version >= version => would_skip += 1,
                _ => would_copy += 1,
            }
        }
    }
    println!("would copy {would_copy}, would skip {would_skip} (dry run: nothing written)");
    Ok(())
}

async fn stats(storage: &dyn Storage, selection: &Selection) -> Outcome {
    let mut scan = scanner(storage, selection).with_values();
    let mut per_session: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    while let Some(page) = scan.next_page().await.map_err(storage_error(storage))? {
        for entry in page {
            let namespace = entry.key.namespace().trim_end_matches(':');
            let session = namespace.rsplit(':').next().unwrap_or(namespace).to_owned();
            let bytes = entry.record.map_or(0, |record| record.value.len() as u64);
            let counts = per_session.entry(session).or_default();
            counts.0 += 1;
            counts.1 += bytes;
        }
    }
    println!("{:<24} {:>10} {:>12}", "session", "records", "bytes");
    let (mut records, mut bytes) = (0, 0);
    for (session, (count, size)) in &per_session {
        println!("{session:<24} {count:>10} {size:>12}");
        records += count;
        bytes += size;
    }
    println!("{:<24} {records:>10} {bytes:>12}", "total");
    Ok(())
}
