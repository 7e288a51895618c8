//! Running an example bot: against Telegram with a token, or offline
//! against the stub with a scripted conversation.

use std::fmt;
use std::time::Duration;

use teloxide::Bot;
use teloxide::dispatching::{Dispatcher, UpdateHandler};
use teloxide::dptree::di::DependencyMap;
use teloxide::error_handlers::LoggingErrorHandler;
use teloxide::update_listeners::{Polling, UpdateListener};

use crate::people::{Chat, User};
use crate::server::{BotApiStub, Reply};

pub use crate::server::BoxError;

/// How long one scripted step may wait for the bot's reply before the run
/// fails (a guard against a silent bot, not a pacing delay).
pub const REPLY_LIMIT: Duration = Duration::from_secs(30);

/// One scripted update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `from` sends a text message in `chat`.
    Say {
        /// The sender.
        from: User,
        /// Where.
        chat: Chat,
        /// What.
        text: String,
    },
    /// `group` became `supergroup`: the service message Telegram sends in
    /// the old group (`migrate_to_chat_id`) when `to`, else the one in the
    /// supergroup (`migrate_from_chat_id`).
    Migrate {
        /// Who upgraded the group.
        from: User,
        /// The group, with its old id.
        group: Chat,
        /// The supergroup, with its new id.
        supergroup: Chat,
        /// Which of the two messages.
        to: bool,
    },
    /// A post in a channel: a message without a sender.
    Post {
        /// The channel.
        channel: Chat,
        /// What.
        text: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Say { from, chat, text } => write!(f, "{} ({chat}): {text}", from.name),
            Step::Post { channel, text } => write!(f, "channel post ({channel}): {text}"),
            Step::Migrate {
                group,
                supergroup,
                to,
                ..
            } => match to {
                true => write!(f, "({group}): migrated to supergroup {}", supergroup.id),
                false => write!(f, "({supergroup}): migrated from group {}", group.id),
            },
        }
    }
}

/// A conversation to play against the bot, one update at a time: each step
/// waits for the bot's reply before the next is sent, so the exchange is the
/// same on every run. Every step must make the bot send a message.
#[derive(Clone, Debug, Default)]
pub struct Script {
    steps: Vec<Step>,
}

impl Script {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// `from` writes `text` in `chat`.
    #[must_use]
    pub fn say(mut self, from: &User, chat: &Chat, text: &str) -> Self {
        self.steps.push(Step::Say {
            from: from.clone(),
            chat: chat.clone(),
            text: text.to_owned(),
        });
        self
    }

    /// `group` becomes `supergroup`, upgraded by `from`: both service
    /// messages, the old group's first, as Telegram sends them.
    #[must_use]
    pub fn group_migrates(mut self, from: &User, group: &Chat, supergroup: &Chat) -> Self {
        for to in [true, false] {
            self.steps.push(Step::Migrate {
                from: from.clone(),
                group: group.clone(),
                supergroup: supergroup.clone(),
                to,
            });
        }
        self
    }

    /// A post in `channel`.
    #[must_use]
    pub fn post(mut self, channel: &Chat, text: &str) -> Self {
        self.steps.push(Step::Post {
            channel: channel.clone(),
            text: text.to_owned(),
        });
        self
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

/// A step and what the bot answered to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// What was sent to the bot.
    pub step: Step,
    /// What the bot sent back.
    pub replies: Vec<Reply>,
    /// Which webhook (index in the list given to [`play_webhooks`]) the
    /// update was delivered to; `None` for long polling.
    pub webhook: Option<usize>,
}

/// The whole conversation of an offline run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transcript {
    /// One entry per step, in order.
    pub exchanges: Vec<Exchange>,
}

impl Transcript {
    /// The texts the bot answered to the messages `user` wrote in `chat`, in order.
    pub fn answers_to(&self, user: &User, chat: &Chat) -> Vec<String> {
        self.exchanges
            .iter()
            .filter(|exchange| {
                matches!(&exchange.step, Step::Say { from, chat: c, .. } if from == user && c == chat)
            })
            .flat_map(|exchange| exchange.replies.iter().map(|reply| reply.text.clone()))
            .collect()
    }
}

/// Runs an example bot.
///
/// With `BOT_TOKEN` set, runs it against Telegram (or the Bot API server in
/// `TELOXIDE_API_URL`, teloxide's convention) until Ctrl-C. Without, starts a
/// [`BotApiStub`] on loopback, runs the real dispatcher against it through
/// long polling, plays `script`, prints the exchange and returns.
///
/// Logs go through `tracing`, filtered by `RUST_LOG` (errors by default).
pub async fn run<E>(
    handler: UpdateHandler<E>,
    deps: DependencyMap,
    script: Script,
) -> Result<(), BoxError>
where
    E: fmt::Debug + Send + Sync + 'static,
{
    init_logging();
    match std::env::var("BOT_TOKEN") {
        Ok(token) if !token.is_empty() => {
            let mut bot = Bot::new(token);
            if let Ok(url) = std::env::var("TELOXIDE_API_URL") {
                bot = bot.set_api_url(url::Url::parse(&url)?);
            }
            println!("running against {} (Ctrl-C to stop)", bot.api_url());
            Dispatcher::builder(bot, handler)
                .dependencies(deps)
                .enable_ctrlc_handler()
                .build()
                .dispatch()
                .await;
            Ok(())
        }
        _ => {
            let stub = BotApiStub::start().await?;
            println!(
                "BOT_TOKEN is not set: playing a scripted chat against a local Bot API stand-in at {}\n",
                stub.url()
            );
            run_offline(&stub, handler, deps, &script, true).await?;
            println!("\nscript done; dispatcher stopped");
            Ok(())
        }
    }
}

/// Runs the real teloxide [`Dispatcher`] (long polling) against `stub`, plays
/// `script` one step at a time, then shuts the dispatcher down and returns
/// the exchange. With `print`, each line is printed as it happens.
///
/// When this returns, every update was handled to the end (the dispatcher's
/// workers have finished), so storages hold the final state.
pub async fn run_offline<E>(
    stub: &BotApiStub,
    handler: UpdateHandler<E>,
    deps: DependencyMap,
    script: &Script,
    print: bool,
) -> Result<Transcript, BoxError>
where
    E: fmt::Debug + Send + Sync + 'static,
{
    let bot = stub.bot();
    let mut dispatcher = Dispatcher::builder(bot.clone(), handler)
        .dependencies(deps)
        .build();
    // What `dispatch()` uses, built here to keep its stop token: stopping
    // the listener ends dispatching through its update stream. (teloxide's
    // `ShutdownToken` is woken with `Notify::notify_waiters`, which is lost
    // when the dispatcher is between two waits, e.g. while it reaps idle
    // workers; the run would then hang.)
    let mut polling = Polling::builder(bot)
        .timeout(Duration::from_secs(10))
        .delete_webhook()
        .await
        .build();
    let stop = polling.stop_token();
    let drive = async {
        stub.first_call("getUpdates").await;
        let played = play(stub, script, print).await;
        stop.stop();
        stub.close();
        played
    };
    let ((), played) = tokio::join!(
        dispatcher.dispatch_with_listener(polling, LoggingErrorHandler::new()),
        drive
    );
    played
}

async fn play(stub: &BotApiStub, script: &Script, print: bool) -> Result<Transcript, BoxError> {
    let mut transcript = Transcript::default();
    for step in script.steps() {
        let before = stub.replies().len();
        if print {
            println!("{step}");
        }
        match step {
            Step::Say { from, chat, text } => stub.send_text(from, chat, text),
            Step::Post { channel, text } => stub.post_in_channel(channel, text),
            Step::Migrate {
                from,
                group,
                supergroup,
                to,
            } => stub.migrate_group(from, group, supergroup, *to),
        };
        let replies = tokio::time::timeout(REPLY_LIMIT, stub.replies_after(before))
            .await
            .map_err(|_| format!("the bot did not answer `{step}` within {REPLY_LIMIT:?}"))?;
        if print {
            for reply in &replies {
                println!("    bot: {}", reply.text);
            }
        }
        transcript.exchanges.push(Exchange {
            step: step.clone(),
            replies,
            webhook: None,
        });
    }
    Ok(transcript)
}

/// Plays `script` against bots listening on `webhooks` (replicas of one bot
/// behind a load balancer): every step is POSTed at once, round-robin, at
/// most `in_flight` requests at a time (Telegram delivers to a webhook in
/// parallel), then waits, at most [`REPLY_LIMIT`], until every step got its
/// reply. With `print`, prints the exchange in script order, each step with
/// the webhook it went to.
///
/// The bot must answer each message quoting it (`reply_parameters`), which
/// is how replies are matched to steps that were handled at the same time.
/// When this returns, each update was answered; the bot may still be
/// committing its sessions.
pub async fn play_webhooks(
    stub: &BotApiStub,
    script: &Script,
    webhooks: &[url::Url],
    in_flight: usize,
    print: bool,
) -> Result<Transcript, BoxError> {
    let updates: Vec<serde_json::Value> = script
        .steps()
        .iter()
        .map(|step| match step {
            Step::Say { from, chat, text } => stub.text_update(from, chat, text),
            Step::Post { channel, text } => stub.channel_post_update(channel, text),
            Step::Migrate {
                from,
                group,
                supergroup,
                to,
            } => stub.migration_update(from, group, supergroup, *to),
        })
        .collect();
    let message_ids: Vec<Option<i64>> = updates
        .iter()
        .map(|update| {
            let message = update.get("message").or_else(|| update.get("channel_post"));
            message.and_then(|message| message["message_id"].as_i64())
        })
        .collect();
    let targets = stub
        .deliver_to_webhooks(&updates, webhooks, in_flight)
        .await?;
    let answered = |replies: &[Reply]| {
        message_ids
            .iter()
            .all(|id| replies.iter().any(|reply| reply.reply_to == *id))
    };
    let waited = tokio::time::timeout(REPLY_LIMIT, async {
        loop {
            let replies = stub.replies();
            if answered(&replies) {
                break;
            }
            stub.replies_after(replies.len()).await;
        }
    })
    .await;
    let replies = stub.replies();
    let mut transcript = Transcript::default();
    for ((step, id), webhook) in script.steps().iter().zip(&message_ids).zip(targets) {
        let answers: Vec<Reply> = replies
            .iter()
            .filter(|reply| reply.reply_to == *id)
            .cloned()
            .collect();
        if print {
            println!("[replica {}] {step}", webhook + 1);
            for reply in &answers {
                println!("    bot: {}", reply.text);
            }
            if answers.is_empty() {
                println!("    (no answer)");
            }
        }
        transcript.exchanges.push(Exchange {
            step: step.clone(),
            replies: answers,
            webhook: Some(webhook),
        });
    }
    if waited.is_err() {
        let silent = transcript
            .exchanges
            .iter()
            .filter(|exchange| exchange.replies.is_empty())
            .count();
        return Err(format!("{silent} updates got no answer within {REPLY_LIMIT:?}").into());
    }
    Ok(transcript)
}

/// Sends `tracing` logs to stderr, filtered by `RUST_LOG` (errors by
/// default), unless the program installed a subscriber already.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    // Fails only if the program installed its own subscriber first: keep that one.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
