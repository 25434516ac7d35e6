//! What the stand-in providers hold and how they answer, written once for
//! `leadrelay dev`'s stand-ins, the integration tests' and the benchmark's
//! (each serves these answers over its own HTTP server):
//! - `ResendBook`: Resend's idempotency (the first answer under a key is the
//!   answer to the same request again; another body under a used key is a
//!   409 `invalid_idempotent_request`), the batch endpoint's limits, email
//!   ids derived from the key, and every email sent, for `GET /emails`
//!   (`limit`, `after`, `before`, newest first) and `GET /emails/{id}`;
//! - `MobizonBook`: every SMS taken, `message/list` over them (its criteria
//!   and pages as Mobizon documents them) and `getsmsstatus`;
//! - `RateWindow`: Resend's per-team limit, a one-second window, with the
//!   `ratelimit-*` headers Resend sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An answer: HTTP status and JSON body.
pub type Answer = (u16, serde_json::Value);

/// The body of the first request under an idempotency key, and its answer.
type FirstAnswer = (Vec<u8>, serde_json::Value);

/// Resend's answers, as the stand-ins give them; clones share what they hold.
#[derive(Default, Clone)]
pub struct ResendBook {
    /// Idempotency key → the request's body and the first answer.
    answers: Arc<Mutex<HashMap<String, FirstAnswer>>>,
    /// Refuse a request without an idempotency key (the tests: leadrelay
    /// always sends one); Resend itself accepts it.
    pub require_key: bool,
    /// Every email sent (or held as sent before), in the order sent.
    sent: Arc<Mutex<Vec<SentEmail>>>,
}

/// An email Resend's stand-in holds as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SentEmail {
    pub id: String,
    pub to: Vec<String>,
    pub subject: Option<String>,
    pub created_at: DateTime<Utc>,
    /// `sent`, `delivered`, `opened`, … as Resend's list names it.
    pub last_event: String,
}

impl SentEmail {
    /// As `GET /emails` and `GET /emails/{id}` show it; the time written as
    /// Resend's API reference writes it (`2023-04-03 22:13:42.674981+00`).
    fn listed(&self) -> serde_json::Value {
        serde_json::json!({
            "object": "email", "id": self.id, "to": self.to,
            "from": "stand-in <onboarding@resend.dev>",
            "created_at": self.created_at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            "subject": self.subject, "bcc": null, "cc": null, "reply_to": null,
            "last_event": self.last_event, "scheduled_at": null,
        })
    }
}

impl ResendBook {
    /// A book that refuses requests without an idempotency key.
    pub fn requiring_keys() -> ResendBook {
        ResendBook {
            require_key: true,
            ..Default::default()
        }
    }

    /// The email id the stand-ins give the email at `index` of a batch (None
    /// for a single email) sent under `key`.
    pub fn email_id(key: &str, index: Option<usize>) -> String {
        match index {
            Some(i) => format!("email-{key}-{i}"),
            None => format!("email-{key}"),
        }
    }

    /// The answer to `POST /emails` (`batch`: `/emails/batch`) with this
    /// idempotency key and body. `deliver` is called once for each email
    /// newly sent, with its id; a replayed request delivers nothing.
    pub fn answer(
        &self,
        batch: bool,
        key: Option<&str>,
        body: &[u8],
        mut deliver: impl FnMut(&str, &serde_json::Value),
    ) -> Answer {
        let key = match key.filter(|k| !k.is_empty()) {
            Some(k) => k.to_string(),
            None if self.require_key => {
                return refusal(422, "missing_required_field", "no idempotency key");
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut answers = lock(&self.answers);
        if let Some((first_body, first_answer)) = answers.get(&key) {
            return if first_body.as_slice() == body {
                (200, first_answer.clone())
            } else {
                refusal(
                    409,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload.",
                )
            };
        }
        let answer = if batch {
            let Ok(emails) = serde_json::from_slice::<Vec<serde_json::Value>>(body) else {
                return refusal(422, "validation_error", "expected a list of emails");
            };
            if emails.is_empty() || emails.len() > 100 {
                return refusal(422, "validation_error", "1 to 100 emails");
            }
            let data: Vec<serde_json::Value> = emails
                .iter()
                .enumerate()
                .map(|(i, email)| {
                    let id = ResendBook::email_id(&key, Some(i));
                    self.keep(&id, email);
                    deliver(&id, email);
                    serde_json::json!({ "id": id })
                })
                .collect();
            serde_json::json!({ "data": data })
        } else {
            let Ok(email) = serde_json::from_slice::<serde_json::Value>(body) else {
                return refusal(422, "validation_error", "the body is not JSON");
            };
            let id = ResendBook::email_id(&key, None);
            self.keep(&id, &email);
            deliver(&id, &email);
            serde_json::json!({ "id": id })
        };
        answers.insert(key, (body.to_vec(), answer.clone()));
        (200, answer)
    }
}

impl ResendBook {
    fn keep(&self, id: &str, email: &serde_json::Value) {
        let to = match &email["to"] {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        self.hold(SentEmail {
            id: id.to_string(),
            to,
            subject: email["subject"].as_str().map(str::to_string),
            created_at: Utc::now(),
            last_event: "sent".into(),
        });
    }

    /// Holds `email` as sent (by the system before leadrelay, say).
    pub fn hold(&self, email: SentEmail) {
        lock(&self.sent).push(email);
    }

    pub fn sent(&self) -> Vec<SentEmail> {
        lock(&self.sent).clone()
    }

    /// Records a later event of email `id` (`delivered`, `opened`, …).
    pub fn set_last_event(&self, id: &str, event: &str) {
        if let Some(email) = lock(&self.sent).iter_mut().find(|e| e.id == id) {
            email.last_event = event.to_string();
        }
    }

    /// `GET /emails?limit&after&before` as Resend documents it: newest
    /// first, `limit` 1 to 100 (default 20), the cursor an email id left out
    /// of the page, `has_more` whether the walk can go on that way.
    pub fn list(&self, query: &str) -> Answer {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let limit = match params.get("limit").map(|v| v.parse::<usize>()) {
            None => 20,
            Some(Ok(n)) if (1..=100).contains(&n) => n,
            Some(_) => return refusal(422, "validation_error", "limit must be between 1 and 100"),
        };
        let mut emails = self.sent();
        emails.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        let position = |id: &str| emails.iter().position(|e| e.id == id);
        let (page, has_more): (Vec<&SentEmail>, bool) =
            match (params.get("after"), params.get("before")) {
                (Some(_), Some(_)) => {
                    return refusal(
                        422,
                        "validation_error",
                        "after and before cannot be used together",
                    );
                }
                (Some(after), None) => {
                    let Some(at) = position(after) else {
                        return refusal(404, "not_found", "cursor not found");
                    };
                    let rest = &emails[at + 1..];
                    (rest.iter().take(limit).collect(), rest.len() > limit)
                }
                (None, Some(before)) => {
                    let Some(at) = position(before) else {
                        return refusal(404, "not_found", "cursor not found");
                    };
                    let start = at.saturating_sub(limit);
                    (emails[start..at].iter().collect(), start > 0)
                }
                (None, None) => (emails.iter().take(limit).collect(), emails.len() > limit),
            };
        let data: Vec<serde_json::Value> = page.iter().map(|e| e.listed()).collect();
        (
            200,
            serde_json::json!({"object": "list", "has_more": has_more, "data": data}),
        )
    }

    /// `GET /emails/{id}`.
    pub fn get(&self, id: &str) -> Answer {
        match self.sent().iter().find(|e| e.id == id) {
            Some(email) => (200, email.listed()),
            None => refusal(404, "not_found", "Email not found"),
        }
    }
}

fn refusal(status: u16, name: &str, message: &str) -> Answer {
    (
        status,
        serde_json::json!({"statusCode": status, "name": name, "message": message}),
    )
}

/// One SMS Mobizon's stand-in took.
#[derive(Debug, Clone)]
pub struct TakenSms {
    pub id: String,
    pub campaign_id: String,
    pub to: String,
    pub text: String,
    pub from: Option<String>,
    /// When it was taken; listed as Mobizon lists it (no zone named).
    pub taken_at: DateTime<Utc>,
    /// The state `message/list` and `getsmsstatus` give it.
    pub status: String,
}

/// What Mobizon's stand-in took, shared by its send, `message/list` and
/// `getsmsstatus` answers: a message it took is listed, whatever became of
/// the answer to its request.
#[derive(Debug, Clone)]
pub struct MobizonBook {
    taken: Arc<Mutex<Vec<TakenSms>>>,
    next: Arc<AtomicU64>,
    /// The state a newly taken SMS has.
    status: &'static str,
}

impl Default for MobizonBook {
    fn default() -> MobizonBook {
        MobizonBook::with_status("ACCEPTD")
    }
}

impl MobizonBook {
    /// A book whose SMS have `status` once taken (`DELIVRD` in dev mode,
    /// which reports each one delivered).
    pub fn with_status(status: &'static str) -> MobizonBook {
        MobizonBook {
            taken: Default::default(),
            next: Arc::new(AtomicU64::new(1000)),
            status,
        }
    }

    pub fn taken(&self) -> Vec<TakenSms> {
        lock(&self.taken).clone()
    }

    /// Changes what the book holds (to date a message back, say).
    pub fn edit(&self, change: impl FnOnce(&mut Vec<TakenSms>)) {
        change(&mut lock(&self.taken));
    }

    /// Takes the SMS of a `sendsmsmessage` form.
    pub fn take(&self, form_body: &[u8]) -> TakenSms {
        let form = form_of(form_body);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let sms = TakenSms {
            id: id.to_string(),
            campaign_id: format!("c{id}"),
            to: form.get("recipient").cloned().unwrap_or_default(),
            text: form.get("text").cloned().unwrap_or_default(),
            from: form.get("from").cloned(),
            taken_at: Utc::now(),
            status: self.status.to_string(),
        };
        lock(&self.taken).push(sms.clone());
        sms
    }

    /// Mobizon's answer to a `sendsmsmessage` it took.
    pub fn sent_answer(sms: &TakenSms) -> serde_json::Value {
        serde_json::json!({"code": 0, "data": {"campaignId": sms.campaign_id, "messageId": sms.id, "status": 2}, "message": ""})
    }

    /// `message/list` as Mobizon documents it: `criteria[to]` (all or part
    /// of the number), `criteria[text]` (exact), `criteria[campaignCreateTsFrom]`
    /// and `criteria[startSendTsFrom]` (`YYYY-MM-DD HH:MM:SS`, read here as
    /// UTC; one of them is required, as the worker always sends one), pages
    /// from 0 of 25, 50 or 100, oldest first.
    pub fn list(&self, form_body: &[u8]) -> serde_json::Value {
        let form = form_of(form_body);
        let since = [
            "criteria[campaignCreateTsFrom]",
            "criteria[startSendTsFrom]",
        ]
        .iter()
        .filter_map(|key| form.get(*key))
        .filter_map(|v| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S").ok())
        .map(|t| t.and_utc())
        .max();
        let Some(since) = since else {
            return serde_json::json!({"code": 1, "data": [], "message": "this stand-in wants a time window"});
        };
        let number = |key: &str| form.get(key).and_then(|v| v.parse::<usize>().ok());
        let size = number("pagination[pageSize]")
            .filter(|n| [25, 50, 100].contains(n))
            .unwrap_or(25);
        let page = number("pagination[currentPage]").unwrap_or(0);
        let found: Vec<TakenSms> = self
            .taken()
            .into_iter()
            .filter(|m| {
                form.get("criteria[to]")
                    .is_none_or(|to| m.to.contains(to.as_str()))
            })
            .filter(|m| {
                form.get("criteria[text]")
                    .is_none_or(|text| &m.text == text)
            })
            .filter(|m| m.taken_at >= since)
            .collect();
        let items: Vec<serde_json::Value> = found
            .iter()
            .skip(page * size)
            .take(size)
            .map(|m| {
                let ts = m.taken_at.format("%Y-%m-%d %H:%M:%S").to_string();
                serde_json::json!({"id": m.id, "campaignId": m.campaign_id, "segNum": "1",
                    "from": m.from.clone().unwrap_or_default(), "to": m.to, "text": m.text,
                    "status": m.status, "startSendTs": ts, "statusUpdateTs": ts})
            })
            .collect();
        serde_json::json!({"code": 0, "data": {"items": items, "totalItemCount": found.len().to_string()}, "message": ""})
    }

    /// `getsmsstatus`: each id asked about with the state of the SMS the book
    /// holds under it, or `status` for one it does not hold.
    pub fn statuses(&self, form_body: &[u8], otherwise: &str) -> serde_json::Value {
        let taken = self.taken();
        let data: Vec<serde_json::Value> = url::form_urlencoded::parse(form_body)
            .filter(|(k, _)| k == "ids[]")
            .map(|(_, id)| {
                let status = taken
                    .iter()
                    .find(|m| m.id == id)
                    .map_or(otherwise, |m| m.status.as_str());
                serde_json::json!({"id": id, "status": status})
            })
            .collect();
        serde_json::json!({"code": 0, "data": data, "message": ""})
    }
}

fn form_of(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// Resend's per-team limit: a fixed one-second window of `limit` requests
/// (0: none). Each request gets the `ratelimit-*` headers Resend sends
/// (`ratelimit-reset` in whole seconds, as Resend sends it); one past the
/// limit gets a 429 with `retry-after`.
pub struct RateWindow {
    pub limit: AtomicU64,
    window: Mutex<(Instant, u64)>,
    /// Requests refused with a 429.
    pub refused: AtomicU64,
}

impl Default for RateWindow {
    fn default() -> RateWindow {
        RateWindow {
            limit: AtomicU64::new(0),
            window: Mutex::new((Instant::now(), 0)),
            refused: AtomicU64::new(0),
        }
    }
}

/// Headers to answer with.
pub type Headers = Vec<(&'static str, String)>;

impl RateWindow {
    /// Starts a new window now, with nothing counted in it.
    pub fn reset(&self) {
        *lock(&self.window) = (Instant::now(), 0);
    }

    /// The headers of a request let through, or those of its 429 (with the
    /// answer's body).
    pub fn admit(&self) -> Result<Headers, (Headers, serde_json::Value)> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return Ok(vec![
                ("ratelimit-limit", "1000000".into()),
                ("ratelimit-remaining", "1000000".into()),
                ("ratelimit-reset", "1".into()),
            ]);
        }
        let mut window = lock(&self.window);
        if window.0.elapsed() >= Duration::from_secs(1) {
            *window = (Instant::now(), 0);
        }
        let reset = (Duration::from_secs(1).saturating_sub(window.0.elapsed()))
            .as_secs_f64()
            .ceil()
            .max(1.0)
            .to_string();
        if window.1 >= limit {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err((
                vec![
                    ("retry-after", reset.clone()),
                    ("ratelimit-limit", limit.to_string()),
                    ("ratelimit-remaining", "0".into()),
                    ("ratelimit-reset", reset),
                ],
                refusal(429, "rate_limit_exceeded", "Too many requests").1,
            ));
        }
        window.1 += 1;
        Ok(vec![
            ("ratelimit-limit", limit.to_string()),
            ("ratelimit-remaining", (limit - window.1).to_string()),
            ("ratelimit-reset", reset),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_answers_a_replay_with_the_first_answer_and_another_body_with_409() {
        let book = ResendBook::default();
        let mut sent = Vec::new();
        let first = book.answer(false, Some("k1"), br#"{"to":["a@b.kz"]}"#, |id, _| {
            sent.push(id.to_string())
        });
        assert_eq!(first.0, 200);
        assert_eq!(first.1["id"], "email-k1");
        let again = book.answer(false, Some("k1"), br#"{"to":["a@b.kz"]}"#, |id, _| {
            sent.push(id.to_string())
        });
        assert_eq!(again, first);
        assert_eq!(sent, ["email-k1"], "a replay sends nothing");
        let other = book.answer(false, Some("k1"), br#"{"to":["c@d.kz"]}"#, |_, _| {});
        assert_eq!(other.0, 409);
        assert_eq!(other.1["name"], "invalid_idempotent_request");
    }

    #[test]
    fn resend_lists_what_it_sent_newest_first_in_pages_both_ways() {
        let book = ResendBook::default();
        let start = Utc::now() - chrono::TimeDelta::hours(1);
        for i in 0..5 {
            book.hold(SentEmail {
                id: format!("e{i}"),
                to: vec![format!("p{i}@mail.ru")],
                subject: None,
                created_at: start + chrono::TimeDelta::minutes(i),
                last_event: "delivered".into(),
            });
        }
        let ids = |answer: &Answer| -> Vec<String> {
            answer.1["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect()
        };
        let first = book.list("limit=2");
        assert_eq!(ids(&first), ["e4", "e3"]);
        assert_eq!(first.1["has_more"], true);
        let second = book.list("limit=2&after=e3");
        assert_eq!(ids(&second), ["e2", "e1"]);
        let last = book.list("limit=2&after=e1");
        assert_eq!(
            (ids(&last), last.1["has_more"].clone()),
            (vec!["e0".to_string()], serde_json::json!(false))
        );
        assert_eq!(ids(&book.list("limit=2&before=e1")), ["e3", "e2"]);
        assert_eq!(ids(&book.list("")).len(), 5, "20 by default");
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "after=nope",
            "after=e1&before=e2",
        ] {
            assert_ne!(book.list(bad).0, 200, "{bad}");
        }
        // the time as Resend's API reference writes it, read back exactly
        let listed = &first.1["data"][0]["created_at"];
        assert!(listed.as_str().unwrap().ends_with("+00"), "{listed}");
        assert_eq!(book.get("e2").0, 200);
        assert_eq!(book.get("missing").0, 404);
    }

    #[test]
    fn resend_batches_are_checked_and_hostile_bodies_refused() {
        let book = ResendBook::requiring_keys();
        assert_eq!(book.answer(false, None, b"{}", |_, _| {}).0, 422);
        assert_eq!(book.answer(true, Some("b"), b"[]", |_, _| {}).0, 422);
        assert_eq!(book.answer(true, Some("b"), b"not json", |_, _| {}).0, 422);
        let many = serde_json::to_vec(&vec![serde_json::json!({}); 101]).unwrap();
        assert_eq!(book.answer(true, Some("c"), &many, |_, _| {}).0, 422);
        let two = book.answer(true, Some("d"), b"[{},{}]", |_, _| {});
        assert_eq!(two.1["data"][1]["id"], "email-d-1");
    }

    #[test]
    fn mobizon_lists_what_it_took_by_number_text_and_time() {
        let book = MobizonBook::default();
        let sms = book.take(b"recipient=77051234567&text=hello");
        assert_eq!(MobizonBook::sent_answer(&sms)["data"]["messageId"], sms.id);
        let since = (Utc::now() - chrono::Duration::minutes(1)).format("%Y-%m-%d %H:%M:%S");
        let form = format!(
            "criteria[to]=7051234567&criteria[text]=hello&criteria[campaignCreateTsFrom]={since}"
        );
        let listed = book.list(form.as_bytes());
        assert_eq!(listed["data"]["items"][0]["id"], sms.id.as_str());
        assert_eq!(
            book.list(b"criteria[to]=7")["code"],
            1,
            "a window is required"
        );
        let other = format!("criteria[text]=bye&criteria[campaignCreateTsFrom]={since}");
        assert_eq!(book.list(other.as_bytes())["data"]["totalItemCount"], "0");
        let status = book.statuses(format!("ids[]={}&ids[]=9", sms.id).as_bytes(), "DELIVRD");
        assert_eq!(status["data"][0]["status"], "ACCEPTD");
        assert_eq!(status["data"][1]["status"], "DELIVRD");
    }

    #[test]
    fn the_rate_window_refuses_past_its_limit() {
        let window = RateWindow::default();
        window.limit.store(2, Ordering::Relaxed);
        assert!(window.admit().is_ok() && window.admit().is_ok());
        let (headers, body) = window.admit().unwrap_err();
        assert!(headers.iter().any(|(h, _)| *h == "retry-after"));
        assert_eq!(body["statusCode"], 429);
        assert_eq!(window.refused.load(Ordering::Relaxed), 1);
    }
}
