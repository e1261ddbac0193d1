//! Build and deploy tasks, decided inside the transaction that creates the task: the version a
//! build gets (so two launches at once never share one), and the deploy tasks a successful
//! build starts (`autorun`, created in the transaction that records the build's success, so a
//! crash never loses them: they are durable `waiting` rows the runner recovers).
//!
//! # Versions
//! A build template's `start_version` counts with its last run of digits; what surrounds it
//! is kept (`1.0.0`, `v2-rc7`, `2026.12.1-nightly`). The first build gets `start_version`;
//! each next build gets the newest build's number + 1, where "newest build" is the newest task
//! of the template that succeeded or is still unfinished (a failed or stopped build consumes
//! nothing), or the newest success recorded in `build_versions` when that is higher (its task
//! was pruned or deleted: its number is never handed out again). The number never drops below
//! `start_version`'s and keeps its width (`007` → `008`); previous versions of another shape
//! (the start version was edited to `2.0.0` after `1.0.4`) start the series again at
//! `start_version`.

use redb::ReadableTable;

use super::projects::{NewEvent, Tx};
use super::tables::{PROJECT_BUILDVERSION, TEMPLATE_TASK};
use super::{Result, codec};
use crate::model::{BuildVersion, OutputLine, Task, TaskStatus, Template};

/// Longest `start_version`, in bytes.
pub const MAX_VERSION_LEN: usize = 64;
/// Most digits of the counted number (so that + 1 never overflows a `u64`).
const MAX_DIGITS: usize = 18;

/// Checks a build template's `start_version`: at most [`MAX_VERSION_LEN`] printable ASCII
/// characters, no spaces, with a number (of at most 18 digits at its end) to count up.
///
/// # Errors
/// The message for the client.
pub fn check_start_version(v: &str) -> std::result::Result<(), String> {
    let ok = v.len() <= MAX_VERSION_LEN
        && v.bytes().all(|b| b.is_ascii_graphic())
        && split(v).is_some_and(|(_, digits, _)| digits.len() <= MAX_DIGITS);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "start_version must be a version with a number to count up, e.g. 1.0.0 (at most \
             {MAX_VERSION_LEN} printable characters without spaces, the last number at most \
             {MAX_DIGITS} digits)"
        ))
    }
}

/// `v` around its last run of ASCII digits: (prefix, digits, suffix); `None` without digits.
fn split(v: &str) -> Option<(&str, &str, &str)> {
    let end = v.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = v[..end]
        .char_indices()
        .rev()
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(0, |(i, c)| i + c.len_utf8());
    Some((&v[..start], &v[start..end], &v[end..]))
}

/// The version after the highest of `previous` in the series of `start` (see the module
/// docs); versions of another shape do not count.
#[must_use]
pub fn next_version(start: &str, previous: &[&str]) -> String {
    let Some((prefix, digits, suffix)) = split(start) else {
        return start.to_owned();
    };
    let counted = previous
        .iter()
        .filter_map(|p| {
            p.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .filter(|n| {
                    !n.is_empty() && n.len() <= MAX_DIGITS && n.bytes().all(|b| b.is_ascii_digit())
                })
                .and_then(|n| n.parse::<u64>().ok())
        })
        .max();
    let (Some(n), Ok(first)) = (counted, digits.parse::<u64>()) else {
        return start.to_owned();
    };
    let next = (n + 1).max(first);
    format!("{prefix}{next:0width$}{suffix}", width = digits.len())
}

impl Tx<'_> {
    /// The newest task of template `template` that succeeded or is unfinished: the build the
    /// next one counts from.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn newest_build(&self, project: u64, template: u64) -> Result<Option<Task>> {
        // Newest first, stopping at the first hit: usually the newest task itself.
        let index = self.raw().open_table(TEMPLATE_TASK)?;
        for row in index
            .range((project, template, 0)..=(project, template, u64::MAX))?
            .rev()
        {
            let id = row?.0.value().2;
            if let Some(t) = self.get::<Task>(project, id)?
                && !matches!(t.status, TaskStatus::Error | TaskStatus::Stopped)
            {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// The version a new task of `template` gets: the next one for a build template with a
    /// `start_version`, none otherwise (deploy tasks inherit their build's).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn build_version(&self, template: &Template) -> Result<Option<String>> {
        let Some(start) = template
            .start_version
            .as_deref()
            .filter(|_| template.kind == "build")
        else {
            return Ok(None);
        };
        let newest = self
            .newest_build(template.project_id, template.id)?
            .and_then(|t| t.version);
        let recorded = self.recorded_build(template.project_id, template.id)?;
        let previous: Vec<&str> = newest
            .iter()
            .chain(recorded.as_ref().map(|r| &r.version))
            .map(String::as_str)
            .collect();
        Ok(Some(next_version(start, &previous)))
    }

    /// What `build_versions` holds for build template `template`.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn recorded_build(&self, project: u64, template: u64) -> Result<Option<BuildVersion>> {
        let table = self.raw().open_table(PROJECT_BUILDVERSION)?;
        let row = table.get((project, template))?;
        match row {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Forgets the recorded builds of template `template` (it is being deleted).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn forget_builds(&self, project: u64, template: u64) -> Result<()> {
        self.raw()
            .open_table(PROJECT_BUILDVERSION)?
            .remove((project, template))?;
        Ok(())
    }

    /// In the transaction that records how task `task` ended: when it is a successful build,
    /// records its version in `build_versions` and creates its autorun deploy tasks (see
    /// [`Tx::autorun_deploys`]), which it returns.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn task_ended(&self, task: &Task, time_us: i64) -> Result<Vec<(Task, OutputLine)>> {
        if task.status != TaskStatus::Success {
            return Ok(Vec::new());
        }
        let template: Option<Template> = self.get(task.project_id, task.template_id)?;
        if let (Some(t), Some(version)) = (&template, &task.version)
            && t.kind == "build"
        {
            let record = BuildVersion {
                project_id: task.project_id,
                template_id: task.template_id,
                version: version.clone(),
            };
            self.raw().open_table(PROJECT_BUILDVERSION)?.insert(
                (task.project_id, task.template_id),
                codec::encode(&record).as_slice(),
            )?;
        }
        self.autorun_deploys(task, time_us)
    }

    /// Stores `task` as a new task (assigning its id) with its first output line (`Task N added
    /// to queue`, stamped `time_us`) and its event (`Task ID N queued for running`, then
    /// `note`); returns the line, which the runner publishes when it queues the task.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn queue_task(&self, task: &mut Task, time_us: i64, note: &str) -> Result<OutputLine> {
        let id = self.insert_task(task)?;
        let line = OutputLine {
            time_us,
            text: format!("Task {id} added to queue"),
        };
        self.append_output(id, 0, std::slice::from_ref(&line))?;
        self.record(NewEvent {
            user_id: task.user_id,
            project_id: Some(task.project_id),
            object_id: Some(id),
            object_type: "task",
            description: format!("Task ID {id} queued for running{note}"),
        })?;
        Ok(line)
    }

    /// For a successful `build`: a `waiting` task of every `autorun` deploy template building
    /// from its template (`build_task_id` = the build, its version, nobody as the starter),
    /// each queued with its line and event. The caller hands them to the runner once this
    /// transaction has committed.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn autorun_deploys(&self, build: &Task, time_us: i64) -> Result<Vec<(Task, OutputLine)>> {
        if build.status != TaskStatus::Success {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for deploy in self.list::<Template>(build.project_id)? {
            if deploy.kind != "deploy"
                || !deploy.autorun
                || deploy.build_template_id != Some(build.template_id)
            {
                continue;
            }
            let mut task = Task {
                build_task_id: Some(build.id),
                version: build.version.clone(),
                ..Task::waiting(build.project_id, deploy.id, self.now())
            };
            let note = format!(" (autorun after build task {})", build.id);
            let line = self.queue_task(&mut task, time_us, &note)?;
            out.push((task, line));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_with_their_last_number() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("1.0.0", &[], "1.0.0"),
            ("1.0.0", &["1.0.0"], "1.0.1"),
            ("1.0.0", &["1.0.9"], "1.0.10"),
            ("1.0.0", &["1.0.99"], "1.0.100"),
            ("v2-rc7", &["v2-rc7"], "v2-rc8"),
            (
                "2026.12.1-nightly",
                &["2026.12.4-nightly"],
                "2026.12.5-nightly",
            ),
            ("1.0.007", &["1.0.009"], "1.0.010"),
            ("7", &["41"], "42"),
            // start_version raised above the series: it wins.
            ("1.0.9", &["1.0.4"], "1.0.9"),
            // another shape: a new series.
            ("2.0.0", &["1.0.4"], "2.0.0"),
            ("1.0.0", &["1.0.x"], "1.0.0"),
            ("1.0.0-rc", &["1.0.4"], "1.0.0-rc"),
            // A version without a number (never accepted, but stored ones stay as they are).
            ("stable", &["stable"], "stable"),
        ];
        for &(start, previous, want) in cases {
            assert_eq!(
                next_version(start, previous),
                want,
                "{start} after {previous:?}"
            );
        }
    }

    #[test]
    fn start_versions_are_checked() {
        for good in [
            "1.0.0",
            "0",
            "v1",
            "1.0.0-rc1",
            "2026.12.1-nightly",
            "r999999999999999999",
        ] {
            assert!(check_start_version(good).is_ok(), "{good}");
        }
        let long = format!("1.{}", "0".repeat(MAX_VERSION_LEN));
        for bad in [
            "",
            "stable",
            "1.0 beta",
            "1.0.0\n",
            "1.0.é",
            "r1999999999999999999",
            long.as_str(),
        ] {
            assert!(check_start_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn splitting_keeps_multibyte_prefixes_whole() {
        assert_eq!(split("é1"), Some(("é", "1", "")));
        assert_eq!(split("1é"), Some(("", "1", "é")));
        assert_eq!(split("abc"), None);
    }
}
