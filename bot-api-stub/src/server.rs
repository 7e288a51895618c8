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
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::people::{Chat, User};

/// The token the stub's bot uses (the stub accepts any token).
pub const TOKEN: &str = "1000000:stub-token";

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
/// `sendMessage` with a well-formed `Message`, and `getWebhookInfo`,
/// `deleteWebhook`, `close`, `setMyCommands` and `answerCallbackQuery` with
/// what Telegram would. Every call is recorded. Other methods get a
/// `404 Not Found` error, as Telegram gives for unknown methods.
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
        let id = {
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
            inner.queue.push(update);
            id
        };
        self.state.changed();
        id
    }

    /// Queues a text message from `from` in `chat`; returns the update id.
    pub fn send_text(&self, from: &User, chat: &Chat, text: &str) -> u32 {
        let message = self.message(Some(from), chat, text);
        self.push_update(json!({ "message": message }))
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
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let params = match body.is_empty() {
        true => json!({}),
        false => serde_json::from_slice(&body).unwrap_or_else(|_| json!({})),
    };
    state.lock().requests.push(ApiRequest {
        method: method.clone(),
        params: params.clone(),
    });
    state.changed();
    let result = match method.to_ascii_lowercase().as_str() {
        "getme" => state.me.clone(),
        "getwebhookinfo" => {
            json!({ "url": "", "has_custom_certificate": false, "pending_update_count": 0 })
        }
        "deletewebhook" | "close" | "setmycommands" | "answercallbackquery" => json!(true),
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
