//! The apple counter behind teloxide's webhook listener, run as several
//! replicas (separate processes) sharing one Redis: the deployment of a bot
//! that outgrew one process.
//!
//! ```text
//! cargo run -p tg-session-example-webhook
//! REPLICAS=3 cargo run -p tg-session-example-webhook
//! ```
//!
//! Uses the Redis server in `REDIS_URL`; without it, starts a private
//! `redis-server` (stopped at exit).
//!
//! Offline (no `BOT_TOKEN`): starts a local stand-in of the Bot API, then
//! `REPLICAS` replicas (default 2), each this program run again as a child
//! process with its own webhook listener on a loopback port. The stand-in
//! plays a load balancer: it POSTs a scripted chat to the replicas in turn,
//! several updates in flight at once, among them one user writing 40
//! messages in two chats at once. The exchange is printed, then every user's
//! count is read back from Redis and compared with the number of their
//! messages; the run fails if any differs.
//!
//! With `BOT_TOKEN` and `WEBHOOK_URL` set (the public HTTPS URL Telegram
//! should call), runs one replica for real, listening on `WEBHOOK_LISTEN`
//! (default `0.0.0.0:8443`) until Ctrl-C. To run several behind a load
//! balancer, give every replica the same `WEBHOOK_URL` (the balancer's) and
//! the same `WEBHOOK_SECRET`; with `WEBHOOK_SETUP=0` a replica neither sets
//! nor deletes the webhook (set it once at deployment), so stopping one
//! replica does not stop Telegram from calling the others.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bot_api_stub::demo::{self, BoxError, Script};
use bot_api_stub::local_redis::LocalRedis;
use bot_api_stub::{BotApiStub, Chat, User};
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use teloxide::types::ReplyParameters;
use teloxide::update_listeners::{UpdateListener, webhooks};
use tg_session::teloxide::SessionsHandlerExt;
use tg_session::{RedisStorage, Session, SessionManager, Sessions, UpdateIds};
use tokio::sync::mpsc;

/// Set in a replica started by the offline run: its number (1, 2, …).
const REPLICA_VAR: &str = "TG_SESSION_WEBHOOK_REPLICA";
/// Set in a replica started by the offline run: the stand-in's URL.
const API_VAR: &str = "TG_SESSION_WEBHOOK_API";
/// Every replica sends the same secret token with `setWebhook`: the
/// balancer (Telegram) sends one token, which every replica must accept.
const SECRET_VAR: &str = "WEBHOOK_SECRET";
/// How long a replica may take to start listening, or to stop.
const CHILD_LIMIT: Duration = Duration::from_secs(60);
/// Updates the stand-in keeps in flight at once (Telegram: up to
/// `max_connections`, 40 by default).
const IN_FLIGHT: usize = 8;
/// The prefix of this example's keys in Redis.
const PREFIX: &str = "tg_session_webhook_example";

/// GramIO: `session({ key: "sessionKey", initial: () => ({ apple: 1 }), storage: redisStorage() })`.
#[derive(Session, Serialize, Deserialize)]
#[session(key = "counter")]
struct Counter {
    #[session(default = 1)]
    apple: u32,
}

/// Updates this replica handled.
static HANDLED: AtomicU32 = AtomicU32::new(0);

async fn on_message(bot: Bot, msg: Message, ctx: Sessions) -> Result<(), BoxError> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    let apples = {
        let mut counter = ctx.counter()?;
        counter.apple += 1;
        counter.apple
    };
    // Quoting the message lets the offline run match answers to updates
    // that several replicas handled at the same time.
    bot.send_message(msg.chat.id, format!("apples: {apples}"))
        .reply_parameters(ReplyParameters::new(msg.id))
        .await?;
    Ok(())
}

async fn manager(redis_url: &str) -> Result<SessionManager, BoxError> {
    let storage = RedisStorage::connect(redis_url).await?;
    Ok(SessionManager::builder()
        .storage(storage)
        .prefix(PREFIX)
        .register::<Counter>()
        .build()?)
}

/// What a replica saw: updates whose sessions were not saved, by cause.
#[derive(Default)]
struct Failures {
    conflicts: AtomicU32,
    other: AtomicU32,
}

/// Runs one replica: the webhook listener on `listen`, the dispatcher, the
/// counter bot; until `stop` fires. Returns what it saw, as one line.
async fn replica(
    bot: Bot,
    redis_url: &str,
    listen: SocketAddr,
    public_url: Option<url::Url>,
    setup: bool,
    ready: impl FnOnce(&url::Url),
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<String, BoxError> {
    let manager = manager(redis_url).await?;
    // Bound before the webhook is set, so no update finds the port closed.
    let socket = tokio::net::TcpListener::bind(listen).await?;
    let address = socket.local_addr()?;
    let url = match public_url {
        Some(url) => url,
        None => url::Url::parse(&format!("http://{address}/webhook"))?,
    };
    let mut options = webhooks::Options::new(address, url.clone());
    if let Ok(secret) = std::env::var(SECRET_VAR) {
        let valid = (1..=256).contains(&secret.len())
            && secret
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        if !valid {
            return Err(format!("{SECRET_VAR}: 1-256 characters of A-Z, a-z, 0-9, _ and -").into());
        }
        options = options.secret_token(secret);
    }
    if setup {
        // What `webhooks::axum` does, kept in our hands so that a replica
        // can also run without touching the webhook (`setup == false`).
        let secret = options.get_or_gen_secret_token().to_owned();
        bot.set_webhook(url.clone()).secret_token(secret).await?;
    }
    let (mut listener, shutdown, router) = webhooks::axum_no_setup(options);
    let stop_token = listener.stop_token();
    let server = tokio::spawn(async move {
        axum::serve(socket, router)
            .with_graceful_shutdown(shutdown)
            .await
    });
    tokio::spawn(async move {
        stop.await;
        stop_token.stop();
    });
    ready(&url);

    let failures = Arc::new(Failures::default());
    let counted = Arc::clone(&failures);
    let handler = Update::filter_message()
        .enter_sessions(manager)
        .endpoint(on_message);
    let bot_for_cleanup = bot.clone();
    Dispatcher::builder(bot, handler)
        .error_handler(Arc::new(move |error: BoxError| {
            let conflict = matches!(
                error.downcast_ref::<tg_session::Error>(),
                Some(tg_session::Error::Conflict { .. })
            );
            match conflict {
                true => counted.conflicts.fetch_add(1, Ordering::Relaxed),
                false => counted.other.fetch_add(1, Ordering::Relaxed),
            };
            // The session layer has logged the error already.
            drop(error);
            async {}
        }))
        .build()
        .dispatch_with_listener(
            listener,
            teloxide::error_handlers::LoggingErrorHandler::new(),
        )
        .await;
    server.await??;
    if setup {
        bot_for_cleanup.delete_webhook().await?;
    }
    Ok(format!(
        "handled {} updates, {} not saved (Conflict), {} other errors",
        HANDLED.load(Ordering::Relaxed),
        failures.conflicts.load(Ordering::Relaxed),
        failures.other.load(Ordering::Relaxed)
    ))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if let Ok(number) = std::env::var(REPLICA_VAR) {
        // Logs to stderr, which the parent shares: stdout is how a replica
        // talks to its parent.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
        return offline_replica(&number).await;
    }
    demo::init_logging();
    let (_local, redis_url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let redis = LocalRedis::start()?;
            let url = redis.url().to_owned();
            (Some(redis), url)
        }
    };
    match std::env::var("BOT_TOKEN") {
        Ok(token) if !token.is_empty() => online(token, &redis_url).await,
        _ => offline(&redis_url).await,
    }
}

/// One replica against Telegram until Ctrl-C.
async fn online(token: String, redis_url: &str) -> Result<(), BoxError> {
    let public_url = std::env::var("WEBHOOK_URL")
        .map_err(|_| "BOT_TOKEN is set but WEBHOOK_URL is not: the public HTTPS URL of this bot")?;
    let listen: SocketAddr = std::env::var("WEBHOOK_LISTEN")
        .unwrap_or_else(|_| "0.0.0.0:8443".to_owned())
        .parse()?;
    let setup = std::env::var("WEBHOOK_SETUP").as_deref() != Ok("0");
    let mut bot = Bot::new(token);
    if let Ok(url) = std::env::var("TELOXIDE_API_URL") {
        bot = bot.set_api_url(url::Url::parse(&url)?);
    }
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let summary = replica(
        bot,
        redis_url,
        listen,
        Some(url::Url::parse(&public_url)?),
        setup,
        |url| println!("listening on {listen} for {url} (Ctrl-C to stop)"),
        ctrl_c,
    )
    .await?;
    println!("stopped: {summary}");
    Ok(())
}

/// A replica started by [`offline`]: listens on a free loopback port, says
/// where on stdout, and stops when its stdin closes or says `stop`.
async fn offline_replica(number: &str) -> Result<(), BoxError> {
    let redis_url = std::env::var("REDIS_URL")?;
    let api = url::Url::parse(&std::env::var(API_VAR)?)?;
    let bot = Bot::new(bot_api_stub::TOKEN).set_api_url(api);
    let stop = async {
        let read = tokio::task::spawn_blocking(|| {
            // A read error counts as the parent being gone.
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        });
        let _ = read.await;
    };
    let summary = replica(
        bot,
        &redis_url,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        true,
        |url| {
            println!("REPLICA listening {url}");
            let _ = std::io::stdout().flush();
        },
        stop,
    )
    .await?;
    println!("REPLICA done replica {number}: {summary}");
    Ok(())
}

/// The scripted chat: Alice writes 40 messages, 20 in her private chat and
/// 20 in a group, interleaved (one user in two chats at once: the case that
/// lost 9 of 40 updates with two replicas); Bob and Carol write a few.
fn script() -> (Script, Vec<User>) {
    let (alice, bob, carol) = (
        User::new(101, "Alice"),
        User::new(102, "Bob"),
        User::new(103, "Carol"),
    );
    let garden = Chat::group(-1001, "Garden club");
    let mut script = Script::new();
    for n in 1..=20 {
        script = script
            .say(&alice, &alice.private_chat(), &format!("apple {n}"))
            .say(&alice, &garden, &format!("pear {n}"));
        if n % 4 == 0 {
            script = script.say(&bob, &bob.private_chat(), &format!("hello {n}"));
        }
        if n % 5 == 0 {
            script = script.say(&carol, &garden, &format!("hi {n}"));
        }
    }
    (script, vec![alice, bob, carol])
}

/// A replica process, killed and reaped if it is still running when dropped.
struct ReplicaProcess {
    number: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl ReplicaProcess {
    fn spawn(
        number: usize,
        redis_url: &str,
        stub: &BotApiStub,
        secret: &str,
    ) -> Result<Self, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(REPLICA_VAR, number.to_string())
            .env(API_VAR, stub.url())
            .env("REDIS_URL", redis_url)
            .env(SECRET_VAR, secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout from a replica")?;
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            number,
            child,
            stdin,
            lines,
        })
    }

    /// The rest of the replica's next line starting with `REPLICA <what> `.
    async fn expect(&mut self, what: &str) -> Result<String, BoxError> {
        let prefix = format!("REPLICA {what} ");
        let number = self.number;
        let found = tokio::time::timeout(CHILD_LIMIT, async {
            while let Some(line) = self.lines.recv().await {
                if let Some(rest) = line.strip_prefix(&prefix) {
                    return Ok(rest.to_owned());
                }
                println!("replica {number}: {line}");
            }
            Err(format!("replica {number} exited before `{prefix}`"))
        })
        .await
        .map_err(|_| format!("replica {number}: no `{prefix}` within {CHILD_LIMIT:?}"))?;
        Ok(found?)
    }

    /// Asks the replica to stop (it finishes the updates it has) and
    /// returns its summary line.
    async fn stop(&mut self) -> Result<String, BoxError> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let summary = self.expect("done").await?;
        // Its stdout closes when it exits: then `wait` returns at once.
        let closed = tokio::time::timeout(CHILD_LIMIT, async {
            while self.lines.recv().await.is_some() {}
        });
        closed
            .await
            .map_err(|_| format!("replica {} did not exit", self.number))?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("replica {} failed: {status}", self.number).into());
        }
        Ok(summary)
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

async fn apples(manager: &SessionManager, user: &User) -> Result<u32, BoxError> {
    let ctx = manager.begin(UpdateIds::new().user(user.id)).await;
    let apples = ctx.counter()?.apple;
    ctx.commit(tg_session::HandlerOutcome::Succeeded).await?;
    Ok(apples)
}

/// The offline run: the stand-in, the replicas, the script, the check.
async fn offline(redis_url: &str) -> Result<(), BoxError> {
    let count: usize = match std::env::var("REPLICAS") {
        Ok(count) => count.parse()?,
        Err(_) => 2,
    };
    let stub = BotApiStub::start().await?;
    println!(
        "BOT_TOKEN is not set: {count} replicas behind a local Bot API stand-in at {} \
         (which plays the load balancer)\n",
        stub.url()
    );
    let (script, users) = script();
    let manager = manager(redis_url).await?;
    // Counts already in Redis (a REDIS_URL that was used before).
    let mut expected = BTreeMap::new();
    for user in &users {
        expected.insert(user.id, apples(&manager, user).await?);
    }
    for step in script.steps() {
        if let demo::Step::Say { from, .. } = step {
            *expected.entry(from.id).or_default() += 1;
        }
    }

    let secret = format!("offline-{}", std::process::id());
    let mut replicas = Vec::new();
    let mut webhooks = Vec::new();
    for number in 1..=count {
        let mut replica = ReplicaProcess::spawn(number, redis_url, &stub, &secret)?;
        let url = replica.expect("listening").await?;
        println!(
            "replica {number} (pid {}) listening at {url}",
            replica.child.id()
        );
        webhooks.push(url::Url::parse(&url)?);
        replicas.push(replica);
    }
    println!();

    let played = demo::play_webhooks(&stub, &script, &webhooks, IN_FLIGHT, true).await;
    println!();
    for replica in &mut replicas {
        let summary = replica.stop().await?;
        println!("{summary}");
    }
    played?;

    println!();
    let mut wrong = 0;
    for user in &users {
        let got = apples(&manager, user).await?;
        let want = expected[&user.id];
        let verdict = if got == want { "ok" } else { "LOST UPDATES" };
        println!(
            "{}: expected {want} apples, got {got}: {verdict}",
            user.name
        );
        wrong += usize::from(got != want);
    }
    match wrong {
        0 => Ok(()),
        _ => Err(format!("{wrong} users' counts differ from their messages").into()),
    }
}
