//! What a launch of a build or deploy template adds to its task: a build's next version
//! (counted in the launch's transaction, see [`crate::store::builds`]), a deploy's build task
//! (required: a successful build of its build template) and the version it inherits.

use super::{Error, Result};
use crate::model::{Task, TaskStatus, Template};
use crate::store::Tx;

/// The `build_task_id` and `version` of a new task of `template`, inside the launch's
/// transaction; `build_task_id` is the body's.
///
/// # Errors
/// [`Error::Invalid`]: a deploy launch without a successful build of its build template, or
/// a build task given to another kind of template.
pub(super) fn launch_fields(
    tx: &Tx<'_>,
    template: &Template,
    build_task_id: Option<u64>,
) -> Result<(Option<u64>, Option<String>)> {
    if template.kind != "deploy" {
        if build_task_id.is_some() {
            return Err(Error::Invalid(
                "build_task_id: only a deploy template's task takes a build task".into(),
            ));
        }
        return Ok((None, tx.build_version(template)?));
    }
    let id = build_task_id.ok_or_else(|| {
        Error::Invalid("build_task_id is required to run a deploy template".into())
    })?;
    let build: Option<Task> = tx.get(template.project_id, id)?;
    let build = build
        .filter(|b| Some(b.template_id) == template.build_template_id)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "build_task_id: task {id} is not a build of this deploy template's build template"
            ))
        })?;
    if build.status != TaskStatus::Success {
        return Err(Error::Invalid(format!(
            "build_task_id: build task {id} has not succeeded (it is {})",
            build.status.as_str()
        )));
    }
    Ok((Some(id), build.version))
}
