//! The users and chats of a scripted conversation.

use std::fmt;

use serde_json::{Value, json};

/// A Telegram user who talks to the bot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub id: u64,
    /// The first name, shown in transcripts.
    pub name: String,
}

impl User {
    /// A user with this id and first name.
    pub fn new(id: u64, name: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
        }
    }

    /// The private chat of this user with the bot.
    pub fn private_chat(&self) -> Chat {
        Chat {
            id: self.id as i64,
            kind: ChatKind::Private {
                first_name: self.name.clone(),
            },
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({ "id": self.id, "is_bot": false, "first_name": self.name })
    }
}

/// A chat the bot is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chat {
    /// The chat id (negative for groups and channels).
    pub id: i64,
    kind: ChatKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ChatKind {
    Private { first_name: String },
    Group { title: String },
    Supergroup { title: String },
    Topic { title: String, thread: i32 },
    Channel { title: String },
}

impl Chat {
    /// A group chat.
    pub fn group(id: i64, title: impl Into<String>) -> Self {
        Self {
            id,
            kind: ChatKind::Group {
                title: title.into(),
            },
        }
    }

    /// A supergroup (not a forum); a group that grows becomes one, with a new id.
    pub fn supergroup(id: i64, title: impl Into<String>) -> Self {
        Self {
            id,
            kind: ChatKind::Supergroup {
                title: title.into(),
            },
        }
    }

    /// A topic (`thread`) of a forum supergroup.
    pub fn forum_topic(id: i64, title: impl Into<String>, thread: i32) -> Self {
        Self {
            id,
            kind: ChatKind::Topic {
                title: title.into(),
                thread,
            },
        }
    }

    /// A channel (its posts have no sender).
    pub fn channel(id: i64, title: impl Into<String>) -> Self {
        Self {
            id,
            kind: ChatKind::Channel {
                title: title.into(),
            },
        }
    }

    pub(crate) fn topic(&self) -> Option<i32> {
        match self.kind {
            ChatKind::Topic { thread, .. } => Some(thread),
            _ => None,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        match &self.kind {
            ChatKind::Private { first_name } => {
                json!({ "id": self.id, "type": "private", "first_name": first_name })
            }
            ChatKind::Group { title } => json!({ "id": self.id, "type": "group", "title": title }),
            ChatKind::Supergroup { title } => {
                json!({ "id": self.id, "type": "supergroup", "title": title })
            }
            ChatKind::Topic { title, .. } => {
                json!({ "id": self.id, "type": "supergroup", "title": title, "is_forum": true })
            }
            ChatKind::Channel { title } => {
                json!({ "id": self.id, "type": "channel", "title": title })
            }
        }
    }
}

impl fmt::Display for Chat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ChatKind::Private { .. } => f.write_str("private chat"),
            ChatKind::Group { title }
            | ChatKind::Supergroup { title }
            | ChatKind::Channel { title } => write!(f, "\"{title}\""),
            ChatKind::Topic { title, thread } => write!(f, "\"{title}\" topic {thread}"),
        }
    }
}
