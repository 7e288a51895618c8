//! [`BotApiStub`]: the HTTP server that plays the Bot API.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use teloxide::Bot;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::people::{Chat, User};

/// The error type of the stand-in and the runners.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The token the stub's bot uses (the stub accepts any token).
pub const TOKEN: &str = "1000000:stub-token";

/// How long a webhook may take to answer one delivered update.
pub const WEBHOOK_LIMIT: Duration = Duration::from_secs(10);

/// One call the bot made to the stub.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiRequest {
    /// The method as the bot spelled it in the URL (`GetUpdates`, `SendMessage`, …).
    pub method: String,
    /// The JSON parameters (an empty object when the bot sent none).
    pub params: Value,
}

impl ApiRequest {
    /// Whether this call is to `method`, compared like the Bot API does (ignoring case).
    pub fn is(&self, method: &str) -> bool {
        self.method.eq_ignore_ascii_case(method)
    }
}

/// A message the bot sent with `sendMessage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The chat it went to.
    pub chat_id: i64,
    /// Its text.
    pub text: String,
    /// The message it answers (`reply_parameters.message_id`), if the bot
    /// quoted one: how replies are matched to updates delivered at once.
    pub reply_to: Option<i64>,
}

/// The webhook set with `setWebhook`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// The URL the bot gave.
    pub url: String,
    /// The secret token the bot asked Telegram to send in the
    /// `X-Telegram-Bot-Api-Secret-Token` header, if any.
    pub secret_token: Option<String>,
}

#[derive(Default)]
struct Inner {
    next_update_id: u32,
    next_message_id: i32,
    /// Updates not yet confirmed by a `getUpdates` offset.
    queue: Vec<Value>,
    requests: Vec<ApiRequest>,
    /// Chats seen in pushed updates, to echo them in sent messages.
    chats: HashMap<i64, Value>,
    /// Set by `setWebhook`, cleared by `deleteWebhook`.
    webhook: Option<Webhook>,
    closed: bool,
}

struct State {
    inner: Mutex<Inner>,
    /// Bumped on every change; long polls and scripted drivers wait on it.
    version: watch::Sender<u64>,
    me: Value,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.version.send_modify(|version| *version += 1);
    }

    /// Waits until `check` returns `Some`, re-checking after every change.
    async fn wait_until<R>(&self, mut check: impl FnMut(&Inner) -> Option<R>) -> R {
        let mut changes = self.version.subscribe();
        loop {
            if let Some(found) = check(&self.lock()) {
                return found;
            }
            // The sender lives as long as `self`, so this only waits.
            let _ = changes.changed().await;
        }
    }
}

/// A local stand-in of the Telegram Bot API on `127.0.0.1`, for running a real
/// teloxide bot without Telegram.
///
/// It answers `getMe` with a complete `Me`, serves pushed updates through
/// `getUpdates` (with `offset`, `limit` and long-poll `timeout`), answers
/// `sendMessage` with a well-formed `Message`, and `setWebhook`,
/// `getWebhookInfo`, `deleteWebhook`, `close`, `setMyCommands` and
/// `answerCallbackQuery` with what Telegram would. Every call is recorded.
/// Other methods get a `404 Not Found` error, as Telegram gives for unknown
/// methods.
///
/// For webhook bots, [`deliver_to_webhooks`](Self::deliver_to_webhooks)
/// POSTs updates to a list of webhook URLs in turn, as a load balancer in
/// front of several replicas of the bot would.
///
/// The server stops when the stub is dropped.
pub struct BotApiStub {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl BotApiStub {
    /// The bot's user id in `getMe`.
    pub const BOT_ID: u64 = 1_000_000;
    /// The bot's username in `getMe`.
    pub const BOT_USERNAME: &'static str = "tg_session_demo_bot";

    /// The complete `Me` the stub answers `getMe` with, as JSON.
    pub fn me_json() -> Value {
        json!({
            "id": Self::BOT_ID,
            "is_bot": true,
            "first_name": "Session demo",
            "username": Self::BOT_USERNAME,
            "can_join_groups": true,
            "can_read_all_group_messages": false,
            "supports_inline_queries": false,
            "can_connect_to_business": false,
            "has_main_web_app": false,
        })
    }

    /// The stub's `Me`, for dispatching updates without HTTP
    /// (`handler.dispatch(deps![update, BotApiStub::me()])`).
    pub fn me() -> teloxide::types::Me {
        // Parsed from text, as teloxide parses `getMe`'s answer.
        serde_json::from_str(&Self::me_json().to_string())
            .unwrap_or_else(|error| unreachable!("the stub's getMe answer is a valid Me: {error}"))
    }

    /// Starts the stub on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let me = Self::me_json();
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                next_update_id: 1,
                next_message_id: 1,
                ..Inner::default()
            }),
            version: watch::Sender::new(0),
            me,
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    /// The base URL to give teloxide (`Bot::set_api_url`).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// A teloxide bot pointed at this stub.
    pub fn bot(&self) -> Bot {
        let url = url::Url::parse(&self.url());
        match url {
            Ok(url) => Bot::new(TOKEN).set_api_url(url),
            // `url()` is always a valid http URL.
            Err(_) => Bot::new(TOKEN),
        }
    }

    /// Queues an update (`update_id` is assigned here); returns its id.
    ///
    /// `kind` is the update without its id, e.g. `{"message": {...}}`.
    pub fn push_update(&self, kind: Value) -> u32 {
        let update = self.number(kind);
        let id = update_id(&update);
        self.state.lock().queue.push(update);
        self.state.changed();
        id
    }

    /// Gives `kind` (an update without its id) the next `update_id` and
    /// remembers its chat, without queueing it: for
    /// [`deliver_to_webhooks`](Self::deliver_to_webhooks).
    fn number(&self, kind: Value) -> Value {
        let mut inner = self.state.lock();
        let id = inner.next_update_id;
        inner.next_update_id += 1;
        let mut update = kind;
        if let Value::Object(fields) = &mut update {
            fields.insert("update_id".to_owned(), json!(id));
            for message in fields.values() {
                if let Some(chat) = message.get("chat")
                    && let Some(chat_id) = chat.get("id").and_then(Value::as_i64)
                {
                    inner.chats.insert(chat_id, chat.clone());
                }
            }
        }
        update
    }

    /// The update of a text message from `from` in `chat` (with its
    /// `update_id`), not queued: for
    /// [`deliver_to_webhooks`](Self::deliver_to_webhooks).
    pub fn text_update(&self, from: &User, chat: &Chat, text: &str) -> Value {
        let message = self.message(Some(from), chat, text);
        self.number(json!({ "message": message }))
    }

    /// The update of a post in a channel (a message with no sender), not
    /// queued.
    pub fn channel_post_update(&self, channel: &Chat, text: &str) -> Value {
        let message = self.message(None, channel, text);
        self.number(json!({ "channel_post": message }))
    }

    /// The webhook the bot set, if any.
    pub fn webhook(&self) -> Option<Webhook> {
        self.state.lock().webhook.clone()
    }

    /// Delivers `updates` the way Telegram delivers to a webhook behind a
    /// load balancer: one HTTP `POST` per update, to `webhooks[0]`,
    /// `webhooks[1]`, … in turn (round-robin), at most `in_flight` at once,
    /// started in order. Each request carries the secret token of the last
    /// `setWebhook`, as Telegram sends it.
    ///
    /// Returns, for each update, the index of the URL it went to. Fails if a
    /// webhook does not answer `200 OK` within [`WEBHOOK_LIMIT`] (Telegram
    /// would retry; here a refusal is a bug to see). A `200` means the bot
    /// accepted the update, not that it handled it: wait for its replies.
    pub async fn deliver_to_webhooks(
        &self,
        updates: &[Value],
        webhooks: &[url::Url],
        in_flight: usize,
    ) -> Result<Vec<usize>, BoxError> {
        if webhooks.is_empty() {
            return Err("no webhook URL to deliver to".into());
        }
        let secret = self.webhook().and_then(|webhook| webhook.secret_token);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let mut posts = JoinSet::new();
        let mut targets = Vec::with_capacity(updates.len());
        for (index, update) in updates.iter().enumerate() {
            let target = index % webhooks.len();
            targets.push(target);
            // Taken before spawning, so the requests start in update order.
            let slot = Arc::clone(&slots).acquire_owned().await?;
            let url = webhooks[target].clone();
            let secret = secret.clone();
            let body = update.to_string();
            posts.spawn(async move {
                let posted = tokio::time::timeout(WEBHOOK_LIMIT, post(&url, secret, body)).await;
                drop(slot);
                match posted {
                    Ok(result) => result,
                    Err(_) => Err(format!("{url} did not answer within {WEBHOOK_LIMIT:?}").into()),
                }
            });
        }
        while let Some(posted) = posts.join_next().await {
            posted??;
        }
        Ok(targets)
    }

    /// Queues a text message from `from` in `chat`; returns the update id.
    pub fn send_text(&self, from: &User, chat: &Chat, text: &str) -> u32 {
        let message = self.message(Some(from), chat, text);
        self.push_update(json!({ "message": message }))
    }

    /// The update of one of the two service messages Telegram sends when
    /// `group` becomes `supergroup` (a new chat id), not queued: with `to`,
    /// the message in the old group that carries `migrate_to_chat_id`;
    /// without, the one in the supergroup that carries `migrate_from_chat_id`.
    pub fn migration_update(
        &self,
        from: &User,
        group: &Chat,
        supergroup: &Chat,
        to: bool,
    ) -> Value {
        let (chat, field, other) = match to {
            true => (group, "migrate_to_chat_id", supergroup.id),
            false => (supergroup, "migrate_from_chat_id", group.id),
        };
        let mut message = self.message(Some(from), chat, "");
        if let Value::Object(fields) = &mut message {
            fields.remove("text");
            fields.insert(field.to_owned(), json!(other));
        }
        self.number(json!({ "message": message }))
    }

    /// Queues one of the two service messages of `group` becoming
    /// `supergroup` (see [`migration_update`](Self::migration_update));
    /// returns the update id.
    pub fn migrate_group(&self, from: &User, group: &Chat, supergroup: &Chat, to: bool) -> u32 {
        let update = self.migration_update(from, group, supergroup, to);
        let id = update_id(&update);
        self.state.lock().queue.push(update);
        self.state.changed();
        id
    }

    /// Queues a post in a channel (a message with no sender); returns the update id.
    pub fn post_in_channel(&self, channel: &Chat, text: &str) -> u32 {
        let message = self.message(None, channel, text);
        self.push_update(json!({ "channel_post": message }))
    }

    fn message(&self, from: Option<&User>, chat: &Chat, text: &str) -> Value {
        let id = {
            let mut inner = self.state.lock();
            inner.next_message_id += 1;
            inner.next_message_id
        };
        let mut message = json!({
            "message_id": id,
            "date": 1_700_000_000 + i64::from(id),
            "chat": chat.to_json(),
            "text": text,
        });
        if let Some(from) = from {
            message["from"] = from.to_json();
        }
        if let Some(thread) = chat.topic() {
            message["message_thread_id"] = json!(thread);
            message["is_topic_message"] = json!(true);
        }
        message
    }

    /// Every call the bot made so far, in order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state.lock().requests.clone()
    }

    /// Every message the bot sent so far, in order.
    pub fn replies(&self) -> Vec<Reply> {
        replies(&self.state.lock())
    }

    /// Waits until the bot has sent more than `count` messages in total,
    /// and returns those after the first `count`.
    pub async fn replies_after(&self, count: usize) -> Vec<Reply> {
        self.state
            .wait_until(|inner| {
                let all = replies(inner);
                (all.len() > count).then(|| all[count..].to_vec())
            })
            .await
    }

    /// Waits until the bot made a call to `method`; returns its parameters.
    pub async fn first_call(&self, method: &str) -> Value {
        self.state
            .wait_until(|inner| {
                inner
                    .requests
                    .iter()
                    .find(|request| request.is(method))
                    .map(|request| request.params.clone())
            })
            .await
    }

    /// Ends every long poll now and answers later polls at once with no
    /// updates, so a dispatcher that is shutting down stops without waiting
    /// out its polling timeout.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.state.changed();
    }
}

impl Drop for BotApiStub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for BotApiStub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotApiStub")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn replies(inner: &Inner) -> Vec<Reply> {
    inner
        .requests
        .iter()
        .filter(|request| request.is("sendMessage"))
        .map(|request| Reply {
            chat_id: request.params["chat_id"].as_i64().unwrap_or_default(),
            text: request.params["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            reply_to: request.params["reply_parameters"]["message_id"].as_i64(),
        })
        .collect()
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    while let Ok((stream, _)) = listener.accept().await {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(&state, request).await) }
            });
            // A connection the bot drops mid-request is not the stub's problem.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    // The path is `/bot<token>/<Method>`.
    let method = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let boundary = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("multipart/form-data"))
        .and_then(|rest| rest.split_once("boundary="))
        .map(|(_, boundary)| boundary.trim_matches('"').to_owned());
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let params = match (&boundary, body.is_empty()) {
        (_, true) => json!({}),
        // teloxide sends `setWebhook` (which may carry a certificate) as a form.
        (Some(boundary), false) => form_fields(&body, boundary),
        (None, false) => serde_json::from_slice(&body).unwrap_or_else(|_| json!({})),
    };
    state.lock().requests.push(ApiRequest {
        method: method.clone(),
        params: params.clone(),
    });
    state.changed();
    let result = match method.to_ascii_lowercase().as_str() {
        "getme" => state.me.clone(),
        "getwebhookinfo" => {
            let url = state
                .lock()
                .webhook
                .as_ref()
                .map(|webhook| webhook.url.clone());
            json!({
                "url": url.unwrap_or_default(),
                "has_custom_certificate": false,
                "pending_update_count": 0,
            })
        }
        "setwebhook" => {
            state.lock().webhook = Some(Webhook {
                url: params["url"].as_str().unwrap_or_default().to_owned(),
                secret_token: params["secret_token"].as_str().map(str::to_owned),
            });
            json!(true)
        }
        "deletewebhook" => {
            state.lock().webhook = None;
            json!(true)
        }
        "close" | "setmycommands" | "answercallbackquery" => json!(true),
        "getupdates" => get_updates(state, &params).await,
        "sendmessage" => sent_message(state, &params),
        _ => {
            let error = json!({
                "ok": false,
                "error_code": 404,
                "description": format!("Not Found: method `{method}` is not played by the stub"),
            });
            return respond(StatusCode::NOT_FOUND, &error);
        }
    };
    respond(StatusCode::OK, &json!({ "ok": true, "result": result }))
}

/// The text fields of a `multipart/form-data` body, as a JSON object of
/// strings (enough for the stub: files are not kept).
fn form_fields(body: &[u8], boundary: &str) -> Value {
    let body = String::from_utf8_lossy(body);
    let mut fields = serde_json::Map::new();
    for part in body.split(&format!("--{boundary}")) {
        let Some((headers, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = headers
            .split("name=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next());
        if let Some(name) = name {
            let value = value.strip_suffix("\r\n").unwrap_or(value);
            fields.insert(name.to_owned(), json!(value));
        }
    }
    Value::Object(fields)
}

fn update_id(update: &Value) -> u32 {
    update["update_id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .unwrap_or_default()
}

/// One webhook request: `POST` of `body` to `url`, on a connection of its
/// own (closed after the answer, as a load balancer may do).
async fn post(url: &url::Url, secret: Option<String>, body: String) -> Result<(), BoxError> {
    let host = url.host_str().ok_or_else(|| format!("{url} has no host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("{url} has no port"))?;
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|error| format!("cannot connect to {url}: {error}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let mut request = Request::post(url.path())
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(secret) = secret {
        request = request.header("x-telegram-bot-api-secret-token", secret);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = response.status();
    // Read to the end so the connection finishes cleanly, then close it.
    let _ = response.into_body().collect().await;
    drop(sender);
    let _ = connection.await;
    match status {
        StatusCode::OK => Ok(()),
        status => Err(format!("{url} answered {status}").into()),
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `getUpdates`: forgets updates below `offset`, then returns up to `limit`
/// queued updates, holding the request up to `timeout` seconds for one.
async fn get_updates(state: &State, params: &Value) -> Value {
    let offset = params["offset"].as_i64().unwrap_or(0);
    let limit = params["limit"]
        .as_u64()
        .map_or(100, |limit| limit.clamp(1, 100)) as usize;
    let timeout = Duration::from_secs(params["timeout"].as_u64().unwrap_or(0));
    {
        let mut inner = state.lock();
        inner
            .queue
            .retain(|update| update["update_id"].as_i64().unwrap_or(0) >= offset);
    }
    let pending = |inner: &Inner| {
        let updates: Vec<Value> = inner.queue.iter().take(limit).cloned().collect();
        (!updates.is_empty() || inner.closed).then_some(updates)
    };
    let updates = tokio::time::timeout(timeout, state.wait_until(pending))
        .await
        .unwrap_or_default();
    Value::Array(updates)
}

/// `sendMessage`: the `Message` Telegram would return.
fn sent_message(state: &State, params: &Value) -> Value {
    let mut inner = state.lock();
    inner.next_message_id += 1;
    let chat_id = params["chat_id"].as_i64().unwrap_or_default();
    let chat =
        inner.chats.get(&chat_id).cloned().unwrap_or_else(
            || json!({ "id": chat_id, "type": "private", "first_name": "someone" }),
        );
    let mut message = json!({
        "message_id": inner.next_message_id,
        "date": 1_700_000_000 + i64::from(inner.next_message_id),
        "chat": chat,
        "from": state.me,
        "text": params["text"],
    });
    if let Some(thread) = params.get("message_thread_id") {
        message["message_thread_id"] = thread.clone();
        message["is_topic_message"] = json!(true);
    }
    message
}
