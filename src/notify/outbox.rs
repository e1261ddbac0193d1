//! What an alert says, built from an outbox row (`store::outbox::Alert`): a subject, a
//! plain text, and the generic webhook's JSON document.

use std::fmt::Write as _;

use serde_json::{Value, json};

pub use crate::store::outbox::Alert;

/// The `status` of a test message (`POST .../notifications/test`).
pub const TEST_STATUS: &str = "test";

/// One alert ready to render, with the link to the task when `--web-host` is set.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The snapshot taken when the task ended.
    pub alert: &'a Alert,
    /// `<web host>/project/<p>/templates/<t>?t=<task>` (the task's page), if known.
    pub link: Option<String>,
}

impl<'a> Message<'a> {
    /// The message for `alert`, linking under `web_host` (none when empty).
    #[must_use]
    pub fn new(alert: &'a Alert, web_host: &str) -> Self {
        let host = web_host.trim().trim_end_matches('/');
        let link = (!host.is_empty() && alert.status != TEST_STATUS).then(|| {
            format!(
                "{host}/project/{}/templates/{}?t={}",
                alert.project_id, alert.template_id, alert.task_id
            )
        });
        Self { alert, link }
    }

    /// Whether this is a test message rather than a task's.
    #[must_use]
    pub fn is_test(&self) -> bool {
        self.alert.status == TEST_STATUS
    }

    /// One line: `Forge: task #12 deploy failed (project Demo)`.
    #[must_use]
    pub fn subject(&self) -> String {
        let a = self.alert;
        if self.is_test() {
            return format!("Forge: test alert (project {})", a.project_name);
        }
        let outcome = if a.status == "success" {
            "succeeded"
        } else {
            "failed"
        };
        format!(
            "Forge: task #{} {} {outcome} (project {})",
            a.task_id, a.template_name, a.project_name
        )
    }

    /// The body: subject, status, who started it, how long it ran, and the link.
    #[must_use]
    pub fn text(&self) -> String {
        let a = self.alert;
        if self.is_test() {
            return format!(
                "{}\nSent by {} to check this channel.",
                self.subject(),
                a.started_by
            );
        }
        let mut text = format!(
            "{}\nTemplate: {}\nStatus: {}\nStarted by: {}",
            self.subject(),
            a.template_name,
            a.status,
            a.started_by
        );
        if let Some(d) = a.duration_secs {
            let _ = write!(text, "\nDuration: {}", duration(d));
        }
        if let Some(link) = &self.link {
            text.push('\n');
            text.push_str(link);
        }
        text
    }

    /// The generic webhook's document.
    #[must_use]
    pub fn json(&self) -> Value {
        let a = self.alert;
        json!({
            "event": if self.is_test() { "test" } else { "task_finished" },
            "task_id": a.task_id,
            "project_id": a.project_id,
            "project": a.project_name,
            "template_id": a.template_id,
            "template": a.template_name,
            "status": a.status,
            "started_by": a.started_by,
            "duration_secs": a.duration_secs,
            "finished": crate::clock::rfc3339(a.finished),
            "url": self.link,
            "text": self.text(),
        })
    }
}

/// `4 s`, `2 min 5 s`, `1 h 0 min 3 s`.
fn duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h} h {m} min {s} s")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(status: &str) -> Alert {
        Alert {
            task_id: 12,
            project_id: 1,
            project_name: "Demo".into(),
            template_id: 7,
            template_name: "deploy".into(),
            status: status.into(),
            started_by: "schedule 3".into(),
            duration_secs: Some(125),
            finished: 1_700_000_000,
            chat: None,
            recipients: Vec::new(),
        }
    }

    #[test]
    fn the_text_names_task_template_status_starter_duration_and_link() {
        let a = alert("error");
        let m = Message::new(&a, "https://forge.example/");
        assert_eq!(
            m.text(),
            "Forge: task #12 deploy failed (project Demo)\nTemplate: deploy\nStatus: error\n\
             Started by: schedule 3\nDuration: 2 min 5 s\n\
             https://forge.example/project/1/templates/7?t=12"
        );
        assert_eq!(
            m.json()["url"],
            "https://forge.example/project/1/templates/7?t=12"
        );
        let a = alert("success");
        let m = Message::new(&a, "");
        assert!(m.link.is_none());
        assert!(m.subject().ends_with("succeeded (project Demo)"));
        assert_eq!(duration(3_603), "1 h 0 min 3 s");
    }
}
