//! The receiver: one delivery to an alias, judged per integration (authentication over the
//! raw body, then every matcher), launched with the extracted values, and logged.

use std::collections::BTreeSet;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::parts::TASK_FIELDS;
use crate::clock::now_us;
use crate::model::{
    AccessKey, Delivery, DeliveryOutcome, Integration, IntegrationAlias, IntegrationMatcher,
    IntegrationValue, OutputLine, Task, Template,
};
use crate::service::auth::secret_hash;
use crate::service::tasks::TaskInput;
use crate::service::{Error, Result, Services, validate};
use crate::store::{NewEvent, Tx, View};

/// Failed authentications from one address within [`FAILURE_WINDOW`] seconds before its
/// deliveries are refused unread.
pub const MAX_FAILURES: u32 = 10;
/// See [`MAX_FAILURES`].
pub const FAILURE_WINDOW: i64 = 60;
/// Longest task message taken from a delivery.
const MESSAGE_MAX: usize = 4096;

/// A delivery as the HTTP layer hands it over.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Its headers (names in any case; the first of a repeated one counts).
    pub headers: Vec<(String, String)>,
    /// Its raw body, exactly as received (what signatures are computed over).
    pub body: bytes::Bytes,
    /// The client's address.
    pub source: String,
}

impl Incoming {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Taken: launched or filtered out (upstream's 204).
    Accepted,
    /// No integration of the alias authenticated it: nothing was done.
    Unauthenticated,
}

/// What one integration makes of a delivery, before anything is written.
enum Verdict {
    BadSignature,
    Filtered(String),
    Launch(Map<String, Value>, Vec<(String, String)>),
}

impl Services {
    /// Receives a delivery to `alias`: every integration it names judges it, launches its
    /// template or not, and logs it, in one transaction. Returns the answer and the tasks to
    /// hand to the runner.
    ///
    /// # Errors
    /// [`Error::Throttled`] when the source failed authentication too often (nothing is
    /// read); [`Error::NotFound`] for an unknown alias; storage failures.
    pub async fn receive(
        &self,
        alias: &str,
        d: Incoming,
    ) -> Result<(Answer, Vec<(Task, OutputLine)>)> {
        let now = self.now();
        // Counted before anything is looked up (one step under the throttle's lock, so a
        // burst gets no more through than the limit); given back unless it fails. The
        // address is the account too: one address's failures block no other.
        let attempt = self
            .delivery_throttle
            .begin(&d.source, &d.source, now)
            .map_err(|retry_after| Error::Throttled { retry_after })?;
        // Looked up by hash: the time taken says nothing about a partly right guess.
        let view = self.store.view()?;
        let (project, id) = view
            .alias_by_hash(secret_hash(alias))?
            .ok_or(Error::NotFound)?;
        let a: IntegrationAlias = view.get(project, id)?.ok_or(Error::NotFound)?;
        let integrations: Vec<Integration> = match a.integration_id {
            Some(i) => view.get(project, i)?.into_iter().collect(),
            None => view
                .list::<Integration>(project)?
                .into_iter()
                .filter(|i| i.searchable)
                .collect(),
        };
        let json: Option<Value> = serde_json::from_slice(&d.body).ok();
        let mut verdicts = Vec::new();
        for i in integrations {
            let verdict = if self.authentic(&view, &i, &d) {
                Self::judge(&view, &i, &d, json.as_ref())?
            } else {
                Verdict::BadSignature
            };
            verdicts.push((i.id, verdict));
        }
        drop(view);
        let refused = verdicts
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::BadSignature))
            .count();
        if refused > 0 {
            attempt.failed();
        } else {
            drop(attempt);
        }
        let answer = if refused > 0 && refused == verdicts.len() {
            Answer::Unauthenticated
        } else {
            Answer::Accepted
        };
        let active = self.active_apps()?;
        let source: String = d.source.chars().take(64).collect();
        let launched = self
            .transact(move |tx| {
                let mut out = Vec::new();
                for (id, verdict) in &verdicts {
                    let Some(i) = tx.get::<Integration>(project, *id)? else {
                        continue;
                    };
                    let outcome = match verdict {
                        Verdict::BadSignature => {
                            tx.record(integration_event(
                                &i,
                                format!(
                                    "Integration {}: a delivery from {source} failed \
                                     authentication",
                                    i.name
                                ),
                            ))?;
                            DeliveryOutcome::BadSignature
                        }
                        Verdict::Filtered(m) => DeliveryOutcome::Filtered(m.clone()),
                        Verdict::Launch(env, fields) => match launch(tx, &i, env, fields, &active)?
                        {
                            Ok((task, line)) => {
                                tx.record(integration_event(
                                    &i,
                                    format!("Integration {} launched task {}", i.name, task.id),
                                ))?;
                                let id = task.id;
                                out.push((task, line));
                                DeliveryOutcome::Launched(id)
                            }
                            Err(why) => DeliveryOutcome::Error(why),
                        },
                    };
                    tx.add_delivery(&mut Delivery {
                        id: 0,
                        project_id: project,
                        integration_id: i.id,
                        time: tx.now(),
                        source: source.clone(),
                        outcome,
                    })?;
                }
                Ok(out)
            })
            .await?;
        Ok((answer, launched))
    }

    /// Whether `d` carries integration `i`'s signature or token (compared in constant time).
    fn authentic(&self, view: &View, i: &Integration, d: &Incoming) -> bool {
        if i.auth_method.is_empty() {
            return true;
        }
        let key: Option<AccessKey> = i
            .auth_secret_id
            .and_then(|k| view.get(i.project_id, k).ok().flatten());
        let Some(secret) = key
            .and_then(|k| self.open_secret(&k).ok())
            .map(|s| s.password)
            .filter(|p| !p.is_empty())
        else {
            return false;
        };
        match i.auth_method.as_str() {
            "github" => d
                .header("x-hub-signature-256")
                .and_then(|h| h.strip_prefix("sha256="))
                .is_some_and(|hex| signed(&secret, &d.body, hex)),
            "hmac" => d
                .header(&i.auth_header)
                .is_some_and(|hex| signed(&secret, &d.body, hex)),
            "token" => d.header(&i.auth_header).is_some_and(|t| {
                // Hashes first, so that not even the token's length shows in the timing.
                secret_hash(t).ct_eq(&secret_hash(&secret)).into()
            }),
            _ => false,
        }
    }

    /// An authenticated delivery against `i`'s matchers, then its extract values.
    fn judge(view: &View, i: &Integration, d: &Incoming, json: Option<&Value>) -> Result<Verdict> {
        let p = i.project_id;
        let matchers: Vec<IntegrationMatcher> = view.list(p)?;
        for m in matchers.iter().filter(|m| m.integration_id == i.id) {
            let actual = source_text(&m.match_type, &m.body_data_type, &m.key, d, json);
            let hit = actual.is_some_and(|a| compare(&m.method, &a, &m.value));
            if !hit {
                let name = if m.name.is_empty() {
                    format!("#{}", m.id)
                } else {
                    m.name.clone()
                };
                return Ok(Verdict::Filtered(name));
            }
        }
        let mut env = Map::new();
        let mut fields = Vec::new();
        let values: Vec<IntegrationValue> = view.list(p)?;
        for v in values.iter().filter(|v| v.integration_id == i.id) {
            let text = source_text(&v.value_source, &v.body_data_type, &v.key, d, json)
                .unwrap_or_default();
            if v.variable_type == "task" {
                fields.push((v.variable.clone(), text));
            } else {
                env.insert(v.variable.clone(), Value::String(text));
            }
        }
        Ok(Verdict::Launch(env, fields))
    }
}

/// HMAC-SHA256 of `body` under `secret` equals hex `tag` (checked in constant time).
fn signed(secret: &str, body: &[u8], tag: &str) -> bool {
    let Some(tag) = unhex(tag.trim()) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The text a matcher or extract value reads: a header, a JSON path of the body, or the
/// whole body. `None` when a JSON path is asked of a body that is not JSON (which matches
/// nothing).
fn source_text(
    source: &str,
    body_type: &str,
    key: &str,
    d: &Incoming,
    json: Option<&Value>,
) -> Option<String> {
    match (source, body_type) {
        ("header", _) => Some(d.header(key).unwrap_or_default().to_owned()),
        (_, "string") => Some(String::from_utf8_lossy(&d.body).into_owned()),
        _ => Some(json.map(|j| path(j, key).map(as_text).unwrap_or_default())?),
    }
}

/// The value at a dotted path (`repository.full_name`, `commits.0.id`, `commits.[0].id`).
fn path<'v>(mut v: &'v Value, key: &str) -> Option<&'v Value> {
    for seg in key.split('.').filter(|s| !s.is_empty()) {
        v = match v {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => {
                let n = seg.trim_start_matches('[').trim_end_matches(']');
                items.get(n.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(v)
}

/// A JSON value as text: strings bare, whole numbers without `.0`, the rest as JSON.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                format!("{f:.0}")
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn compare(method: &str, actual: &str, expected: &str) -> bool {
    match method {
        "equals" => actual == expected,
        "unequals" => actual != expected,
        "contains" => actual.contains(expected),
        _ => false,
    }
}

fn integration_event(i: &Integration, description: String) -> NewEvent {
    NewEvent {
        user_id: None,
        project_id: Some(i.project_id),
        object_id: Some(i.id),
        object_type: "integration",
        description,
    }
}

/// Stores the `waiting` task integration `i` launches: its `task_params`, the extracted
/// environment over theirs, and the extracted task fields. `Ok(Err(why))` when it cannot
/// launch (a template gone or inactive, a field a task refuses).
fn launch(
    tx: &Tx<'_>,
    i: &Integration,
    env: &Map<String, Value>,
    fields: &[(String, String)],
    active: &BTreeSet<String>,
) -> Result<std::result::Result<(Task, OutputLine), String>> {
    let Some(template) = tx.get::<Template>(i.project_id, i.template_id)? else {
        return Ok(Err(format!("template {} no longer exists", i.template_id)));
    };
    if !active.contains(&template.app) {
        return Ok(Err(format!("the app {} is not active", template.app)));
    }
    let params: TaskInput = serde_json::from_str(&i.task_params).unwrap_or_default();
    let mut environment = match params.environment.as_deref().map(serde_json::from_str) {
        Some(Ok(Value::Object(map))) => map,
        _ => Map::new(),
    };
    environment.extend(env.clone());
    let environment = Value::Object(environment).to_string();
    if let Err(why) = crate::sandbox::check_task_vars(&template, &environment) {
        return Ok(Err(why));
    }
    let mut task = Task {
        integration_id: Some(i.id),
        environment,
        message: params.message.unwrap_or_default(),
        git_branch: params.git_branch.filter(|b| !b.trim().is_empty()),
        limit: params.limit.unwrap_or_default(),
        ..Task::waiting(i.project_id, template.id, tx.now())
    };
    for (field, value) in fields {
        if let Err(why) = set_field(&mut task, field, value) {
            return Ok(Err(why));
        }
    }
    let line = tx.queue_task(&mut task, now_us(), &format!(" (integration {})", i.name))?;
    Ok(Ok((task, line)))
}

/// Sets task field `field` (one of [`TASK_FIELDS`]) from an extracted value.
fn set_field(task: &mut Task, field: &str, value: &str) -> std::result::Result<(), String> {
    debug_assert!(TASK_FIELDS.contains(&field));
    match field {
        "message" => task.message = value.chars().take(MESSAGE_MAX).collect(),
        "git_branch" => {
            let branch = value.strip_prefix("refs/heads/").unwrap_or(value);
            validate::git_branch(branch).map_err(|e| format!("git_branch: {e}"))?;
            task.git_branch = Some(branch.to_owned());
        }
        "commit_hash" => {
            let ok =
                (4..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err("commit_hash: not a hexadecimal commit id".into());
            }
            task.commit_hash = Some(value.to_owned());
        }
        "limit" => {
            if value.chars().any(char::is_control) || value.starts_with('-') {
                return Err("limit: not a valid host pattern".into());
            }
            value.clone_into(&mut task.limit);
        }
        _ => return Err(format!("{field} is not a task field")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_texts() {
        let v: Value = serde_json::from_str(
            r#"{"ref":"refs/heads/main","n":3,"f":1.5,"ok":true,"c":[{"id":"a1"}],"o":{"k":null}}"#,
        )
        .expect("json");
        let at = |k: &str| path(&v, k).map(as_text);
        assert_eq!(at("ref").as_deref(), Some("refs/heads/main"));
        assert_eq!(at("n").as_deref(), Some("3"));
        assert_eq!(at("f").as_deref(), Some("1.5"));
        assert_eq!(at("ok").as_deref(), Some("true"));
        assert_eq!(at("c.0.id").as_deref(), Some("a1"));
        assert_eq!(at("c.[0].id").as_deref(), Some("a1"));
        assert_eq!(at("o.k").as_deref(), Some(""));
        assert_eq!(at("c.9.id"), None);
        assert_eq!(at("ref.x"), None);
    }

    #[test]
    fn methods() {
        assert!(compare("equals", "a", "a"));
        assert!(!compare("equals", "a", "b"));
        assert!(compare("unequals", "a", "b"));
        assert!(compare("contains", "refs/heads/main", "main"));
        assert!(!compare("nope", "a", "a"));
    }

    #[test]
    fn hex_and_signatures() {
        assert_eq!(unhex("00ff"), Some(vec![0, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
        // RFC 4231 test case 2.
        assert!(signed(
            "Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ));
        assert!(!signed("Jefe", b"what do ya want for nothing!", "5bdcc146"));
    }
}
