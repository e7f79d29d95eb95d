//! Rooms as the simulator keeps them, and the room callbacks the vendors send about them
//! (`shared/vendors/bans-and-callbacks.md` §2, §3): a user joins through `POST /_sim/rooms/join`
//! (refused when a ZEGO login ban rule is in force for them), leaves through
//! `POST /_sim/rooms/leave`, and is removed by a successful `KickoutUser` / `RemoveUser*`. Each of
//! the three posts the vendor's callback to `callback_url` — ZEGO `room_login` / `room_logout`
//! (reason 0, or 3 for a server kick), TRTC 103 / 104 (Reason 1, or 3 when removed) — signed as
//! the vendor signs it, with the vendor's retry policy: ZEGO tries again 2, 4, 8, 16 and 32 s after
//! each failure, TRTC at once and then every 10 s until the event is a minute old.
//!
//! The signing here is written from the vendors' documents, apart from Bouncer's verifiers. Where
//! the documents are silent the simulator takes one reading and says so: a ZEGO retry is signed
//! again (a new timestamp and nonce: ZEGO's `timestamp` is "server time"); a TRTC retry carries
//! a new `CallbackTs` (documented as the send time) and so a new `Sign`. An app without a
//! callback secret in the simulator's configuration gets no callbacks.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::{Sim, lock};

/// Every delivery attempt is kept, up to this many (oldest dropped).
const MAX_DELIVERIES: usize = 100_000;

/// A room, as the vendor's client named it: TRTC's numeric 1234 and string "1234" differ.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoomKey {
    pub vendor: String,
    pub app_id: u32,
    pub room_id: String,
    pub numeric: bool,
}

/// A user in a room.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub user_id: String,
    pub session_id: String,
    /// Unix milliseconds.
    pub login_time: i64,
}

/// `POST /_sim/rooms/join` and `/_sim/rooms/leave`.
#[derive(Clone, Debug, Deserialize)]
pub struct JoinRequest {
    pub vendor: String,
    pub app_id: u32,
    /// A string, or (TRTC) a number.
    pub room_id: Value,
    pub user_id: String,
    /// Where this event's callback goes instead of the configured URL (benchmarks spread
    /// callbacks over replicas).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Deliver the callback this many times (a vendor redelivering), each signed anew. Default 1.
    #[serde(default)]
    pub deliveries: Option<u32>,
}

/// One callback delivery attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    pub vendor: String,
    pub app_id: u32,
    /// `room_login`, `room_logout`, `103`, `104`.
    pub event: String,
    pub room_id: String,
    pub user_id: String,
    /// 0 for a normal exit, 3 for a server kick (both vendors' removal reason).
    pub reason: Option<i64>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The HTTP status received, or 0 when none came (refused, timed out).
    pub status: u16,
    /// Milliseconds since the simulator started, when the attempt was sent.
    pub sent_ms: u64,
    /// How long the receiver took to answer (or to fail), in milliseconds.
    pub answer_ms: f64,
}

/// The simulator's rooms and callback deliveries.
#[derive(Default)]
pub(crate) struct Rooms {
    members: BTreeMap<RoomKey, HashMap<String, Member>>,
}

/// What the vendor says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Happened {
    Joined,
    Left,
    Kicked,
}

/// A callback to send: the event, and where.
#[derive(Clone)]
struct Outgoing {
    room: RoomKey,
    member: Member,
    happened: Happened,
    url: String,
    secret: SecretString,
    repeat: u32,
}

/// Why a join was refused.
#[derive(Debug, Serialize)]
pub struct Refused {
    pub refused: &'static str,
}

fn room_key(req: &JoinRequest) -> Result<RoomKey, String> {
    let (room_id, numeric) = match &req.room_id {
        Value::String(s) if !s.is_empty() => (s.clone(), false),
        Value::Number(n) if req.vendor == "trtc" => (n.to_string(), true),
        _ => return Err("room_id must be a non-empty string, or a number for TRTC".into()),
    };
    if !["zego", "trtc"].contains(&req.vendor.as_str()) {
        return Err("vendor must be zego or trtc".into());
    }
    Ok(RoomKey { vendor: req.vendor.clone(), app_id: req.app_id, room_id, numeric })
}

impl Sim {
    fn callback_secret(&self, vendor: &str, app_id: u32) -> Option<SecretString> {
        match vendor {
            "zego" => self.zego_callback.get(&app_id).cloned(),
            _ => self.trtc_callback.get(&app_id).cloned(),
        }
    }

    /// Where `vendor`'s callbacks for `app_id` go.
    fn callback_url(&self, vendor: &str, app_id: u32, base: Option<&str>) -> Option<String> {
        let base = base.map(str::to_owned).or_else(|| lock(&self.callback_base).clone())?;
        Some(format!("{}/v1/callbacks/{vendor}/{app_id}", base.trim_end_matches('/')))
    }

    /// A user joins a room: refused under a ZEGO login ban rule, else a member (a user already
    /// in the room logs in again with a new session), and the login callback is sent.
    pub fn join(self: &std::sync::Arc<Self>, req: &JoinRequest) -> Result<Member, Result<Refused, String>> {
        let room = room_key(req).map_err(Err)?;
        if room.vendor == "zego" && self.login_banned(room.app_id, &room.room_id, &req.user_id) {
            return Err(Ok(Refused { refused: "login_banned" }));
        }
        let now = chrono::Utc::now().timestamp_millis();
        let member = Member {
            user_id: req.user_id.clone(),
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            login_time: now,
        };
        lock(&self.rooms).members.entry(room.clone()).or_default().insert(req.user_id.clone(), member.clone());
        self.announce(&room, &member, Happened::Joined, req.callback_url.as_deref(), req.deliveries.unwrap_or(1));
        Ok(member)
    }

    /// A user leaves of their own accord (a normal exit callback); `false` if not in the room.
    pub fn leave(self: &std::sync::Arc<Self>, req: &JoinRequest) -> Result<bool, String> {
        let room = room_key(req)?;
        let gone = lock(&self.rooms).members.get_mut(&room).and_then(|m| m.remove(&req.user_id));
        let Some(member) = gone else { return Ok(false) };
        self.announce(&room, &member, Happened::Left, req.callback_url.as_deref(), req.deliveries.unwrap_or(1));
        Ok(true)
    }

    /// A successful server kick: the named users who are in the room leave it, each with the
    /// vendor's removal callback.
    pub(crate) fn kicked(
        self: &std::sync::Arc<Self>,
        vendor: &str,
        app_id: u32,
        room_id: &str,
        numeric: bool,
        users: &[String],
    ) {
        let room = RoomKey { vendor: vendor.to_owned(), app_id, room_id: room_id.to_owned(), numeric };
        let removed: Vec<Member> = {
            let mut rooms = lock(&self.rooms);
            let Some(members) = rooms.members.get_mut(&room) else { return };
            users.iter().filter_map(|u| members.remove(u)).collect()
        };
        for member in removed {
            self.announce(&room, &member, Happened::Kicked, None, 1);
        }
    }

    /// Sets where callbacks go from now on.
    pub fn set_callback_url(&self, url: Option<String>) {
        *lock(&self.callback_base) = url;
    }

    /// Who is in which room now.
    pub fn rooms(&self) -> Vec<(RoomKey, Vec<Member>)> {
        lock(&self.rooms).members.iter().map(|(k, m)| (k.clone(), m.values().cloned().collect())).collect()
    }

    /// Every callback delivery attempt so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    fn login_banned(&self, app_id: u32, room_id: &str, user_id: &str) -> bool {
        let now = chrono::Utc::now().timestamp();
        lock(&self.rules).iter().any(|r| {
            r.app_id == app_id
                && r.expire_time > now
                && r.disabled_privileges.contains(&1)
                && match r.rule_type {
                    2 => r.room_id == room_id,
                    3 => r.user_id == user_id,
                    4 => r.room_id == room_id && r.user_id == user_id,
                    _ => false,
                }
        })
    }

    fn announce(
        self: &std::sync::Arc<Self>,
        room: &RoomKey,
        member: &Member,
        happened: Happened,
        base: Option<&str>,
        repeat: u32,
    ) {
        let (Some(secret), Some(url)) =
            (self.callback_secret(&room.vendor, room.app_id), self.callback_url(&room.vendor, room.app_id, base))
        else {
            return;
        };
        let out = Outgoing {
            room: room.clone(),
            member: member.clone(),
            happened,
            url,
            secret,
            repeat: repeat.clamp(1, 100),
        };
        let sim = self.clone();
        tokio::spawn(async move {
            for _ in 0..out.repeat {
                sim.deliver(&out).await;
            }
        });
    }

    /// Sends one callback with the vendor's retries, until it is answered 2xx (ZEGO) or 200
    /// (TRTC), or the vendor gives up.
    async fn deliver(&self, out: &Outgoing) {
        // When the event happened (a logout's time, a TRTC event's time): the same on every retry.
        let event_ms = chrono::Utc::now().timestamp_millis();
        // ZEGO: the first attempt, then 5 retries at 2, 4, 8, 16, 32 s after each.
        // TRTC: at once, then every 10 s until the event is a minute old.
        let waits: Vec<u64> =
            if out.room.vendor == "zego" { vec![0, 2, 4, 8, 16, 32] } else { vec![0, 0, 10, 10, 10, 10, 10] };
        for (i, wait) in waits.into_iter().enumerate() {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let (body, headers) = if out.room.vendor == "zego" {
                (zego_body(out, event_ms, out.secret.expose_secret()), vec![])
            } else {
                let body = trtc_body(out, event_ms);
                let sign = trtc_sign(out.secret.expose_secret(), &body);
                (body, vec![("Sign", sign), ("SdkAppId", out.room.app_id.to_string())])
            };
            let mut request = self.http.post(&out.url).header("Content-Type", "application/json").body(body);
            for (k, v) in headers {
                request = request.header(k, v);
            }
            let sent = std::time::Instant::now();
            let status = match request.send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            let (event, reason) = event_name(out);
            let delivery = Delivery {
                vendor: out.room.vendor.clone(),
                app_id: out.room.app_id,
                event,
                room_id: out.room.room_id.clone(),
                user_id: out.member.user_id.clone(),
                reason,
                attempt: i as u32 + 1,
                status,
                sent_ms: self.started.elapsed().as_millis() as u64,
                answer_ms: sent.elapsed().as_secs_f64() * 1000.0,
            };
            {
                let mut d = lock(&self.deliveries);
                if d.len() >= MAX_DELIVERIES {
                    d.remove(0);
                }
                d.push(delivery);
            }
            let ok = if out.room.vendor == "zego" { (200..300).contains(&status) } else { status == 200 };
            if ok {
                return;
            }
        }
    }
}

fn event_name(out: &Outgoing) -> (String, Option<i64>) {
    let zego = out.room.vendor == "zego";
    match (out.happened, zego) {
        (Happened::Joined, true) => ("room_login".into(), None),
        (Happened::Left, true) => ("room_logout".into(), Some(0)),
        (Happened::Kicked, true) => ("room_logout".into(), Some(3)),
        (Happened::Joined, false) => ("103".into(), None),
        (Happened::Left, false) => ("104".into(), Some(1)),
        (Happened::Kicked, false) => ("104".into(), Some(3)),
    }
}

/// ZEGO's signature: the secret, timestamp and nonce sorted as strings, joined, SHA-1, hex.
pub fn zego_callback_signature(secret: &str, timestamp: &str, nonce: &str) -> String {
    let mut three = vec![secret.to_owned(), timestamp.to_owned(), nonce.to_owned()];
    three.sort();
    let mut h = Sha1::new();
    for part in &three {
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A ZEGO callback body, every value a string as the current documents type them, signed now.
fn zego_body(out: &Outgoing, logout_ms: i64, secret: &str) -> String {
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let nonce = rand::random_range(100_000u32..1_000_000_000).to_string();
    let signature = zego_callback_signature(secret, &timestamp, &nonce);
    let m = &out.member;
    let mut body = json!({
        "appid": out.room.app_id.to_string(), "timestamp": timestamp, "nonce": nonce, "signature": signature,
        "room_id": out.room.room_id, "room_seq": "1", "user_account": m.user_id, "user_nickname": m.user_id,
        "session_id": m.session_id, "login_time": m.login_time.to_string(), "user_role": "2",
        "user_update_seq": "1",
    });
    match out.happened {
        Happened::Joined => {
            body["event"] = "room_login".into();
            body["room_name"] = out.room.room_id.clone().into();
            body["auth_level"] = "4".into();
            body["relogin"] = "0".into();
            body["callback_data"] = "".into();
        }
        Happened::Left | Happened::Kicked => {
            body["event"] = "room_logout".into();
            body["logout_time"] = logout_ms.to_string().into();
            body["reason"] = if out.happened == Happened::Kicked { "3" } else { "0" }.into();
        }
    }
    body.to_string()
}

/// A TRTC room event body: `RoomId` a number for a numeric room, else a string.
fn trtc_body(out: &Outgoing, event_ms: i64) -> String {
    let room: Value = if out.room.numeric {
        out.room.room_id.parse::<u64>().map(Value::from).unwrap_or_else(|_| out.room.room_id.clone().into())
    } else {
        out.room.room_id.clone().into()
    };
    let (kind, reason) = match out.happened {
        Happened::Joined => (103, 1),
        Happened::Left => (104, 1),
        Happened::Kicked => (104, 3),
    };
    json!({
        "EventGroupId": 1, "EventType": kind, "CallbackTs": chrono::Utc::now().timestamp_millis(),
        "EventInfo": {"RoomId": room, "EventTs": event_ms / 1000, "EventMsTs": event_ms, "UserId": out.member.user_id,
                      "Role": 21, "Reason": reason}
    })
    .to_string()
}

/// TRTC's `Sign`: HMAC-SHA256 of the raw body under the key, standard base64.
pub fn trtc_sign(key: &str, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(body.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_examples_sign_as_the_vendors_show() {
        assert_eq!(
            zego_callback_signature("secret", "1470820198", "123412"),
            "5bd59fd62953a8059fb7eaba95720f66d19e4517"
        );
        let body = "{\n\t\"EventGroupId\":\t1,\n\t\"EventType\":\t103,\n\t\"CallbackTs\":\t1615554923704,\n\t\"EventInfo\":\t{\n\t\t\"RoomId\":\t12345,\n\t\t\"EventTs\":\t1608441737,\n\t\t\"UserId\":\t\"test\",\n\t\t\"UniqueId\":\t1615554922656,\n\t\t\"Role\":\t20,\n\t\t\"Reason\":\t1\n\t}\n}";
        assert_eq!(trtc_sign("123654", body), "IncDMWHWRAoOHN72/K0wTTIY8pDyMINRLtBsmg3b+Uo=");
    }
}
